"""HTTP backends of the load generator; each streams so every token gets a client timestamp.

distllm  POST {base}/generate (DistServe-compatible). Request JSON:
             {"prompt": str, "stream": true, "max_tokens": int, "ignore_eos": bool,
              "temperature": float, "top_p": float, ...}
         Response: HTTP 200 with an NDJSON stream (Content-Type application/x-ndjson), one JSON
         object per line, flushed as soon as the tokens exist:
             {"text": "<new text since the previous line (a delta, not cumulative)>",
              "token_ids": [ids of the new tokens]        (optional but recommended),
              "finished": bool,
              "lifetime_events": [{"event_type": "arrival" | "prefill_begin" | ...,
                                   "timestamp": float}]  (optional, on the last line)}
         A line counts len(token_ids) tokens when "token_ids" is present, otherwise one token,
         except a terminator line ({"finished": true} with empty text) which counts none.
         Event names and timestamps follow distllm/request.py (`Lifetime.to_json`). An
         {"error": str} line aborts the request. Non-200 answers are failed requests.
openai   POST {base}/v1/completions (or `openai-chat`: /v1/chat/completions), SSE `data:` lines,
         `stream_options.include_usage`; vLLM / SGLang servers too. One token per non-empty chunk;
         the usage chunk's completion_tokens is kept as `num_output_tokens`.
deepspeed  POST {base}/mii/{model} (DeepSpeed-MII REST, non-streaming): only the end-to-end
         latency is measurable, so the record has one token timestamp at the end: TTFT = latency,
         TPOT is not measured (excluded from TPOT statistics) and the generated length comes from
         the answer's `generated_length` (`num_output_tokens`).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True)
class BackendRequest:
    prompt: str
    prompt_len: int
    output_len: int
    ignore_eos: bool = True
    temperature: float = 0.0


@dataclass
class BackendResult:
    """What the client saw; times are time.perf_counter() seconds."""

    token_timestamps: list[float] = field(default_factory=list)
    text: str = ""
    end_time: float = 0.0
    error: str | None = None
    lifecycle_events: list[dict] = field(default_factory=list)
    num_output_tokens: int | None = None  # as reported by the server, when it says


class Backend(ABC):
    """One serving API. `generate` never raises on server or network errors: it fills `error`."""

    name: str = ""
    default_endpoint: str = ""
    is_streaming: bool = True

    def __init__(
        self,
        base_url: str,
        model: str = "",
        endpoint: str | None = None,
        extra_body: dict | None = None,
    ) -> None:
        self.model = model
        path = endpoint or self.default_endpoint.format(model=model)
        self.url = base_url.rstrip("/") + "/" + path.lstrip("/")
        self.extra_body = dict(extra_body or {})

    @abstractmethod
    def payload(self, req: BackendRequest) -> dict: ...

    @abstractmethod
    async def read_response(self, resp: aiohttp.ClientResponse, out: BackendResult) -> None: ...

    async def generate(self, session: aiohttp.ClientSession, req: BackendRequest) -> BackendResult:
        out = BackendResult()
        try:
            async with session.post(self.url, json={**self.payload(req), **self.extra_body}) as r:
                if r.status != 200:
                    out.error = f"HTTP {r.status}: {(await r.text())[:200]}"
                else:
                    await self.read_response(r, out)
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as e:
            out.error = f"{type(e).__name__}: {e}"
        out.end_time = time.perf_counter()
        if not self.is_streaming and out.error is None:
            out.token_timestamps = [out.end_time]  # the whole answer arrives at once
        if out.error is None and not out.token_timestamps:
            out.error = "no tokens received"
        return out


class DistllmBackend(Backend):
    name = "distllm"
    default_endpoint = "/generate"

    def payload(self, req: BackendRequest) -> dict:
        return {
            "prompt": req.prompt,
            "stream": True,
            "max_tokens": req.output_len,
            "ignore_eos": req.ignore_eos,
            "temperature": req.temperature,
            "top_p": 1.0,
        }

    async def read_response(self, resp: aiohttp.ClientResponse, out: BackendResult) -> None:
        async for raw in resp.content:
            now = time.perf_counter()
            if not raw.strip():
                continue
            obj = json.loads(raw)
            if obj.get("error"):
                out.error = f"server error: {obj['error']}"
                return
            text = obj.get("text") or ""
            if "token_ids" in obj:
                n = len(obj["token_ids"])
            else:
                n = 0 if obj.get("finished") and not text else 1
            out.token_timestamps.extend([now] * n)
            out.text += text
            if obj.get("lifetime_events"):
                out.lifecycle_events = list(obj["lifetime_events"])


class OpenAICompletionsBackend(Backend):
    name = "openai"
    default_endpoint = "/v1/completions"

    def payload(self, req: BackendRequest) -> dict:
        body = {
            "model": self.model,
            "prompt": req.prompt,
            "max_tokens": req.output_len,
            "temperature": req.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if req.ignore_eos:
            body["ignore_eos"] = True  # vLLM / SGLang extension
        return body

    @staticmethod
    def chunk_text(choice: dict) -> str:
        return choice.get("text") or ""

    async def read_response(self, resp: aiohttp.ClientResponse, out: BackendResult) -> None:
        async for raw in resp.content:
            now = time.perf_counter()
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event: lines
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            obj = json.loads(data)
            if obj.get("error"):
                out.error = f"server error: {obj['error']}"
                return
            if obj.get("usage"):
                out.num_output_tokens = obj["usage"].get("completion_tokens")
            for choice in obj.get("choices") or []:
                text = self.chunk_text(choice)
                if text:
                    out.token_timestamps.append(now)
                    out.text += text


class OpenAIChatBackend(OpenAICompletionsBackend):
    name = "openai-chat"
    default_endpoint = "/v1/chat/completions"

    def payload(self, req: BackendRequest) -> dict:
        body = super().payload(req)
        del body["prompt"]
        body["messages"] = [{"role": "user", "content": req.prompt}]
        body["max_completion_tokens"] = body.pop("max_tokens")
        return body

    @staticmethod
    def chunk_text(choice: dict) -> str:
        return (choice.get("delta") or {}).get("content") or ""


class DeepSpeedMIIBackend(Backend):
    name = "deepspeed"
    default_endpoint = "/mii/{model}"
    is_streaming = False

    def payload(self, req: BackendRequest) -> dict:
        return {
            "prompts": [req.prompt],
            "max_new_tokens": req.output_len,
            "ignore_eos": req.ignore_eos,
            "do_sample": req.temperature > 0,
        }

    async def read_response(self, resp: aiohttp.ClientResponse, out: BackendResult) -> None:
        obj = json.loads(await resp.text())
        if isinstance(obj, str):  # some MII versions JSON-encode the answer twice
            obj = json.loads(obj)
        item = obj[0] if isinstance(obj, list) else obj
        if isinstance(item, dict):
            out.text = str(item.get("generated_text", ""))
            if item.get("generated_length") is not None:
                out.num_output_tokens = int(item["generated_length"])
        else:
            out.text = str(item)


BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls
    for cls in (DistllmBackend, OpenAICompletionsBackend, OpenAIChatBackend, DeepSpeedMIIBackend)
}


def create_backend(
    name: str,
    base_url: str,
    model: str = "",
    endpoint: str | None = None,
    extra_body: dict | None = None,
) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return BACKENDS[name](base_url, model, endpoint, extra_body)
