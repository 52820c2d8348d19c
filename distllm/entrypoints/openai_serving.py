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


async def completions(ctx: ServingContext, request: Request) -> Response:
    body = await read_model(request, CompletionRequest, ctx.config.max_body_bytes)
    ctx.check_model(body.model)
    prompt = _single_prompt(body.prompt)
    prompt_ids = ctx.prompt_ids(prompt)
    params = _sampling(ctx, body, body.max_tokens)
    echo = (prompt if isinstance(prompt, str) else ctx.tokenizer.decode(prompt_ids)) \
        if body.echo else ""
    request_id, created = random_id("cmpl"), int(time.time())
    model = ctx.config.served_model_name
    outputs = ctx.engine.generate(prompt_ids, params, request_id)
    first = await ctx.first_output(outputs, request)
    if not body.stream:
        final = await ctx.last_output(first, outputs, request)
        choice = CompletionChoice(text=echo + final.text, finish_reason=finish_reason(final))
        usage = UsageInfo.of(len(prompt_ids), len(final.token_ids))
        return JSONResponse(CompletionResponse(id=request_id, created=created, model=model,
                                               choices=[choice], usage=usage).model_dump())
    opts = body.stream_options
    include_usage = bool(opts and opts.include_usage)
    continuous = bool(include_usage and opts.continuous_usage_stats)
    pending_echo = [echo]

    def make_chunks(output: RequestOutput) -> list[dict]:
        text = pending_echo.pop() + output.new_text if pending_echo else output.new_text
        if not text and not output.finished:
            return []
        chunk = {"id": request_id, "object": "text_completion", "created": created,
                 "model": model, "choices": [{"index": 0, "text": text, "logprobs": None,
                                              "finish_reason": finish_reason(output)}]}
        if include_usage:
            chunk["usage"] = usage_of(output) if continuous else None
        return [chunk]

    def usage_chunk(output: RequestOutput) -> dict:
        return {"id": request_id, "object": "text_completion", "created": created,
                "model": model, "choices": [], "usage": usage_of(output)}

    return StreamingResponse(
        _sse_stream(ctx, first, outputs, make_chunks, usage_chunk if include_usage else None),
        media_type="text/event-stream")


async def chat_completions(ctx: ServingContext, request: Request) -> Response:
    body = await read_model(request, ChatCompletionRequest, ctx.config.max_body_bytes)
    ctx.check_model(body.model)
    if body.logprobs:
        raise ApiError(400, "logprobs are not supported", param="logprobs")
    prompt = render_chat(ctx.tokenizer, body.messages, body.add_generation_prompt)
    prompt_ids = ctx.prompt_ids(prompt, param="messages", add_special_tokens=False)
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    try:
        params = _sampling(ctx, body, body.max_new_tokens(DEFAULT_MAX_TOKENS))
    except ApiError as e:
        if e.param != "max_tokens":
            raise
        raise ApiError(400, e.message.replace("max_tokens", field, 1), param=field) from None
    request_id, created = random_id("chatcmpl"), int(time.time())
    model = ctx.config.served_model_name
    outputs = ctx.engine.generate(prompt_ids, params, request_id)
    first = await ctx.first_output(outputs, request)
    if not body.stream:
        final = await ctx.last_output(first, outputs, request)
        choice = ChatChoice(message=ChatResponseMessage(content=final.text),
                            finish_reason=finish_reason(final))
        usage = UsageInfo.of(len(prompt_ids), len(final.token_ids))
        return JSONResponse(ChatCompletionResponse(id=request_id, created=created, model=model,
                                                   choices=[choice], usage=usage).model_dump())
    opts = body.stream_options
    include_usage = bool(opts and opts.include_usage)
    base = {"id": request_id, "object": "chat.completion.chunk", "created": created,
            "model": model}
    sent_role = [False]

    def chunk(delta: dict, reason: str | None) -> dict:
        out = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": reason}]}
        if include_usage:
            out["usage"] = None
        return out

    def make_chunks(output: RequestOutput) -> list[dict]:
        chunks = []
        if not sent_role[0]:
            sent_role[0] = True
            chunks.append(chunk({"role": "assistant", "content": ""}, None))
        if output.new_text or output.finished:
            delta = {"content": output.new_text} if output.new_text else {}
            chunks.append(chunk(delta, finish_reason(output)))
        return chunks

    def usage_chunk(output: RequestOutput) -> dict:
        return {**base, "choices": [], "usage": usage_of(output)}

    return StreamingResponse(
        _sse_stream(ctx, first, outputs, make_chunks, usage_chunk if include_usage else None),
        media_type="text/event-stream")
