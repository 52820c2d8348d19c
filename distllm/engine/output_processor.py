"""Engine-side per-request output state: incremental detokenization, stop strings (trimmed from
the text; while a request runs, text that could begin a stop string is held back so a streaming
client never sees part of one), and the RequestOutput of each step."""
from __future__ import annotations

from dataclasses import dataclass

from distllm.core.request_state import Request, RequestStatus
from distllm.core.scheduler import Scheduler
from distllm.engine.outputs import RequestOutput
from distllm.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass
class _OutputState:
    request: Request
    prompt: str | None
    detokenizer: IncrementalDetokenizer
    text: str = ""  # output text so far, stop string trimmed
    num_processed_tokens: int = 0  # output tokens already detokenized
    num_sent_chars: int = 0  # characters of `text` already returned as `new_text`


def find_stop_string(text: str, new_len: int, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """Earliest stop string that ends inside the last `new_len` characters of `text`:
    (start index, stop string), or None."""
    best: tuple[int, str] | None = None
    for stop in stops:
        index = text.find(stop, max(0, len(text) - new_len - len(stop) + 1))
        if index >= 0 and (best is None or index < best[0]):
            best = (index, stop)
    return best


class OutputProcessor:
    """Turns scheduler updates into RequestOutputs; finishes requests that hit a stop string."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._states: dict[str, _OutputState] = {}  # request id -> unfinished output state

    def add_request(self, request: Request, prompt: str | None) -> None:
        params = request.sampling_params
        detokenizer = IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids,
                                             skip_special_tokens=params.skip_special_tokens)
        self._states[request.request_id] = _OutputState(request, prompt, detokenizer)

    def has_request(self, request_id: str) -> bool:
        return request_id in self._states

    def has_unfinished_requests(self) -> bool:
        """Requests whose final output has not been returned yet."""
        return bool(self._states)

    def process(self, updated: list[Request], scheduler: Scheduler) -> list[RequestOutput]:
        """Outputs for the requests that got tokens this step, plus any request the scheduler
        finished without a token (aborted, ignored)."""
        outputs = [self._update(self._states[r.request_id], scheduler) for r in updated
                   if r.request_id in self._states]
        for state in list(self._states.values()):
            if state.request.is_finished:
                outputs.append(self._update(state, scheduler))
        return outputs

    def _update(self, state: _OutputState, scheduler: Scheduler) -> RequestOutput:
        request = state.request
        new_text = ""
        for token_id in request.output_token_ids[state.num_processed_tokens:]:
            new_text += state.detokenizer.step(token_id)
        state.num_processed_tokens = request.num_output_tokens
        if request.is_finished:
            new_text += state.detokenizer.finish()
        state.text += new_text
        stop = find_stop_string(state.text, len(new_text), request.sampling_params.stop)
        if stop is not None:
            self._apply_stop(state, stop, scheduler)
        return self._output(state)

    def _apply_stop(self, state: _OutputState, stop: tuple[int, str],
                    scheduler: Scheduler) -> None:
        index, stop_str = stop
        request = state.request
        include = request.sampling_params.include_stop_str_in_output
        state.text = state.text[:index + len(stop_str) if include else index]
        request.stop_reason = stop_str
        if request.is_finished:
            request.status = RequestStatus.FINISHED_STOPPED
        else:
            scheduler.finish_requests(request.request_id, RequestStatus.FINISHED_STOPPED)

    def _deliverable_text(self, state: _OutputState) -> str:
        """The text that may reach the client: while running, the tail that could still be the
        start of a stop string is held back."""
        stops = state.request.sampling_params.stop
        if state.request.is_finished or not stops:
            return state.text
        hold = max(len(s) for s in stops) - 1
        return state.text[:max(state.num_sent_chars, len(state.text) - hold)]

    def _output(self, state: _OutputState) -> RequestOutput:
        request = state.request
        if request.is_finished:
            del self._states[request.request_id]
        text = self._deliverable_text(state)
        new_text, state.num_sent_chars = text[state.num_sent_chars:], len(text)
        return RequestOutput(
            request_id=request.request_id, prompt=state.prompt,
            prompt_token_ids=request.prompt_token_ids, text=text,
            token_ids=list(request.output_token_ids), finished=request.is_finished,
            finish_reason=request.status.finish_reason, stop_reason=request.stop_reason,
            new_text=new_text, error=request.error, num_preemptions=request.num_preemptions,
            arrival_time=request.arrival_time, token_times=list(request.token_times),
            lifetime=request.lifetime)
