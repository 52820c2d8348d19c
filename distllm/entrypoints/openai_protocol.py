"""Request and response bodies of the HTTP API (pydantic): OpenAI completions / chat, the
DistServe-compatible /generate, tokenize / detokenize, and the OpenAI-style error object.

Request models forbid unknown fields and use strict types (`"5"` is not an integer), so a bad body
becomes a 400 naming the field. `to_sampling_params()` maps a request to `SamplingParams`.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from distllm.sampling_params import SamplingParams, SamplingParamsError


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class SamplingFields(RequestModel):
    """Sampling options shared by every generation endpoint (vLLM extensions included)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_tokens: int = 0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def unsupported_field(self) -> tuple[str, str] | None:
        """(field, message) of an option this server cannot honour, or None."""
        if self.n != 1:
            return "n", "only n=1 is supported"
        if self.best_of not in (None, 1):
            return "best_of", "only best_of=1 is supported"
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0.0:
                return name, "penalties are not supported (must be 0)"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported"
        return None

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        """Raises SamplingParamsError naming the bad field."""
        unsupported = self.unsupported_field()
        if unsupported is not None:
            raise SamplingParamsError(*unsupported)
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, min_tokens=self.min_tokens, seed=self.seed,
            stop=tuple([self.stop] if isinstance(self.stop, str) else self.stop or ()),
            stop_token_ids=tuple(self.stop_token_ids or ()), ignore_eos=self.ignore_eos,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens)


class StreamOptions(RequestModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


# ---- /generate (DistServe-compatible) -------------------------------------------------------
class GenerateRequest(SamplingFields):
    prompt: str | list[int]
    stream: bool = False
    max_tokens: int = 16
    use_beam_search: Literal[False] = False
    request_id: str | None = None


# ---- /v1/completions -------------------------------------------------------------------------
class CompletionRequest(SamplingFields):
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = 16
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    logprobs: None = None
    suffix: None = None


class UsageInfo(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class CompletionChoice(ResponseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class CompletionResponse(ResponseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# ---- /v1/chat/completions --------------------------------------------------------------------
class ContentPart(RequestModel):
    type: Literal["text"]
    text: str


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    add_generation_prompt: bool = True
    logprobs: bool = False
    top_logprobs: None = None

    def max_new_tokens(self, default: int) -> int:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens if self.max_tokens is not None else default


class ChatResponseMessage(ResponseModel):
    role: str = "assistant"
    content: str | None = None


class ChatChoice(ResponseModel):
    index: int = 0
    message: ChatResponseMessage
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionResponse(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class ChatDelta(ResponseModel):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(ResponseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


# ---- tokenize / detokenize / models / errors ------------------------------------------------
class TokenizeRequest(RequestModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[int]


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "distllm"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: int | str | None = None) -> dict[str, Any]:
    """The OpenAI error object: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
