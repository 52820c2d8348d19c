"""OpenAI-compatible `/v1/completions` and `/v1/chat/completions` over `AsyncLLM`.

Streaming answers are SSE: one `data: {chunk}` event per engine output that adds text, a final
chunk with `finish_reason`, the usage chunk when `stream_options.include_usage`, then
`data: [DONE]`. Chunks are built as plain dicts (the hot path); full answers use the pydantic
response models.
"""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import Request

from distllm.engine.async_llm import EngineError
from distllm.engine.outputs import RequestOutput
from distllm.entrypoints.http_common import ApiError, ServingContext, read_model
from distllm.entrypoints.openai_protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChatResponseMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    SamplingFields,
    StreamOptions,
    UsageInfo,
    error_body,
    random_id,
)
from distllm.sampling_params import SamplingParams, SamplingParamsError

SSE_DONE = b"data: [DONE]\n\n"
DEFAULT_MAX_TOKENS = 16
# NOTE: the engine's finish reasons are OpenAI's except "abort" (kept as is).
_FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def finish_reason(output: RequestOutput) -> str | None:
    return _FINISH_REASONS.get(output.finish_reason or "") if output.finished else None


def usage_of(output: RequestOutput) -> dict:
    return UsageInfo.of(len(output.prompt_token_ids), len(output.token_ids)).model_dump()


def render_chat(tokenizer: object, messages: list[ChatMessage],
                add_generation_prompt: bool) -> str:
    """The prompt text: the tokenizer's chat template when it has one, else `role: content`
    lines followed by `assistant:`."""
    plain = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
             for m in messages]
    if getattr(tokenizer, "chat_template", None):
        import jinja2

        try:
            return tokenizer.apply_chat_template(plain, add_generation_prompt)
        except jinja2.TemplateError as e:
            raise ApiError(400, f"the chat template failed: {e}", param="messages") from None
    lines = "".join(f"{m['role']}: {m['content']}\n" for m in plain)
    return lines + ("assistant:" if add_generation_prompt else "")


def _sampling(ctx: ServingContext, body: SamplingFields, max_tokens: int) -> SamplingParams:
    try:
        return body.to_sampling_params(max_tokens)
    except SamplingParamsError as e:
        raise ctx.sampling_error(e) from None


def _single_prompt(prompt: str | list) -> str | list[int]:
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
        return prompt
    if len(prompt) != 1:
        raise ApiError(400, "only one prompt per request is supported", param="prompt")
    return prompt[0]


async def _sse_stream(ctx: ServingContext, first: RequestOutput,
                      outputs: AsyncIterator[RequestOutput],
                      make_chunks: Callable[[RequestOutput], list[dict]],
                      usage_chunk: Callable[[RequestOutput], dict] | None) -> AsyncIterator[bytes]:
    last = first
    try:
        async for output in ctx.follow(first, outputs):
            last = output
            for chunk in make_chunks(output):
                yield sse(chunk)
    except EngineError as e:
        yield sse(error_body(str(e), "server_error", None, 500))
    if usage_chunk is not None:
        yield sse(usage_chunk(last))
    yield SSE_DONE


class _CompletionChunks:
    """The SSE chunks of one streaming completion (plain dicts: this is the hot path)."""

    def __init__(self, base: dict, echo: str, stream_options: StreamOptions | None) -> None:
        self.base, self.pending_echo = base, echo
        self.include_usage = bool(stream_options and stream_options.include_usage)
        self.continuous = bool(self.include_usage and stream_options.continuous_usage_stats)

    def __call__(self, output: RequestOutput) -> list[dict]:
        text, self.pending_echo = self.pending_echo + output.new_text, ""
        if not text and not output.finished:
            return []
        chunk = {**self.base, "choices": [{"index": 0, "text": text, "logprobs": None,
                                           "finish_reason": finish_reason(output)}]}
        if self.include_usage:
            chunk["usage"] = usage_of(output) if self.continuous else None
        return [chunk]

    def usage(self, output: RequestOutput) -> dict:
        return {**self.base, "choices": [], "usage": usage_of(output)}


class _ChatChunks(_CompletionChunks):
    """Chat deltas: a first chunk with the role, then content, then the finish reason."""

    def __init__(self, base: dict, stream_options: StreamOptions | None) -> None:
        super().__init__(base, "", stream_options)
        self.sent_role = False

    def _chunk(self, delta: dict, reason: str | None) -> dict:
        out = {**self.base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": reason}]}
        if self.include_usage:
            out["usage"] = None
        return out

    def __call__(self, output: RequestOutput) -> list[dict]:
        chunks = []
        if not self.sent_role:
            self.sent_role = True
            chunks.append(self._chunk({"role": "assistant", "content": ""}, None))
        if output.new_text or output.finished:
            delta = {"content": output.new_text} if output.new_text else {}
            chunks.append(self._chunk(delta, finish_reason(output)))
        return chunks


def _streaming_response(ctx: ServingContext, first: RequestOutput,
                        outputs: AsyncIterator[RequestOutput],
                        chunks: _CompletionChunks) -> StreamingResponse:
    usage = chunks.usage if chunks.include_usage else None
    return StreamingResponse(_sse_stream(ctx, first, outputs, chunks, usage),
                             media_type="text/event-stream")


async def completions(ctx: ServingContext, request: Request) -> Response:
    body = await read_model(request, CompletionRequest, ctx.config.max_body_bytes)
    ctx.check_model(body.model)
    prompt = _single_prompt(body.prompt)
    prompt_ids = ctx.prompt_ids(prompt)
    params = _sampling(ctx, body, body.max_tokens)
    echo = ""
    if body.echo:
        echo = prompt if isinstance(prompt, str) else ctx.tokenizer.decode(prompt_ids)
    base = {"id": random_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": ctx.config.served_model_name}
    outputs = ctx.engine.generate(prompt_ids, params, base["id"])
    first = await ctx.first_output(outputs, request)
    if body.stream:
        return _streaming_response(ctx, first, outputs,
                                   _CompletionChunks(base, echo, body.stream_options))
    final = await ctx.last_output(first, outputs, request)
    choice = CompletionChoice(text=echo + final.text, finish_reason=finish_reason(final))
    usage = UsageInfo.of(len(prompt_ids), len(final.token_ids))
    base.pop("object")
    return JSONResponse(CompletionResponse(**base, choices=[choice], usage=usage).model_dump())


def _chat_params(ctx: ServingContext, body: ChatCompletionRequest) -> SamplingParams:
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    try:
        return _sampling(ctx, body, body.max_new_tokens(DEFAULT_MAX_TOKENS))
    except ApiError as e:
        if e.param != "max_tokens":
            raise
        raise ApiError(400, e.message.replace("max_tokens", field, 1), param=field) from None


async def chat_completions(ctx: ServingContext, request: Request) -> Response:
    body = await read_model(request, ChatCompletionRequest, ctx.config.max_body_bytes)
    ctx.check_model(body.model)
    if body.logprobs:
        raise ApiError(400, "logprobs are not supported", param="logprobs")
    prompt = render_chat(ctx.tokenizer, body.messages, body.add_generation_prompt)
    prompt_ids = ctx.prompt_ids(prompt, param="messages", add_special_tokens=False)
    params = _chat_params(ctx, body)
    base = {"id": random_id("chatcmpl"), "object": "chat.completion.chunk",
            "created": int(time.time()), "model": ctx.config.served_model_name}
    outputs = ctx.engine.generate(prompt_ids, params, base["id"])
    first = await ctx.first_output(outputs, request)
    if body.stream:
        return _streaming_response(ctx, first, outputs, _ChatChunks(base, body.stream_options))
    final = await ctx.last_output(first, outputs, request)
    choice = ChatChoice(message=ChatResponseMessage(content=final.text),
                        finish_reason=finish_reason(final))
    usage = UsageInfo.of(len(prompt_ids), len(final.token_ids))
    base.pop("object")
    return JSONResponse(ChatCompletionResponse(**base, choices=[choice],
                                               usage=usage).model_dump())
