"""What the engine hands back per request: `RequestOutput` (cumulative text and tokens)."""
from __future__ import annotations

from dataclasses import dataclass, field

from distllm.metrics import RequestRecord
from distllm.request import Lifetime


@dataclass
class RequestOutput:
    """The state of one request after a step; `finished` marks the last one."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str  # output text so far: the concatenated `new_text`s (stop string trimmed)
    token_ids: list[int]  # output token ids so far
    finished: bool = False
    finish_reason: str | None = None  # stop | length | abort | ignored
    stop_reason: int | str | None = None  # the stop token id or stop string that matched
    new_text: str = ""  # text added by this step (for streaming)
    error: str | None = None
    num_preemptions: int = 0
    arrival_time: float = 0.0
    token_times: list[float] = field(default_factory=list)  # monotonic time of each token
    lifetime: Lifetime = field(default_factory=Lifetime)

    def to_record(self) -> RequestRecord:
        """The metrics record (TTFT, TPOT, ...) of a finished request."""
        end = self.token_times[-1] if self.token_times else self.arrival_time
        return RequestRecord(prompt_len=len(self.prompt_token_ids), output_len=len(self.token_ids),
                             start_time=self.arrival_time, end_time=end,
                             token_timestamps=list(self.token_times), error=self.error)
