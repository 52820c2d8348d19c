"""What every HTTP route shares: `ServerConfig`, `ApiError` (-> OpenAI error object), body
parsing with a size limit, prompt checks, and waiting on the engine while watching for a client
disconnect (which aborts the request)."""
from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from distllm.engine.async_llm import EngineDeadError, EngineError, QueueFullError
from distllm.entrypoints.openai_protocol import error_body
from distllm.sampling_params import SamplingParamsError

if TYPE_CHECKING:
    from distllm.engine.async_llm import AsyncLLM
    from distllm.engine.outputs import RequestOutput
    from distllm.entrypoints.server_metrics import ServerMetrics

ModelT = TypeVar("ModelT", bound=BaseModel)
T = TypeVar("T")


@dataclass(frozen=True)
class ServerConfig:
    """HTTP-side options of `distllm serve` (the engine has its own EngineConfig)."""

    served_model_name: str = "distllm"
    model_path: str | None = None  # also accepted as the request's "model"
    api_key: str | None = None  # None: no authentication
    max_body_bytes: int = 4 * 2**20
    retry_after_s: int = 1  # Retry-After of a 503 when the queue is full

    def __post_init__(self) -> None:
        if not self.served_model_name:
            raise ValueError("served_model_name must be non-empty")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s}")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("HTTP server")
        g.add_argument("--served-model-name", default=None,
                       help="model name in the OpenAI API (default: --model)")
        g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
        g.add_argument("--max-body-bytes", type=int, default=4 * 2**20,
                       help="largest accepted request body")
        g.add_argument("--retry-after-s", type=int, default=1,
                       help="Retry-After of the 503 sent when the queue is full")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> ServerConfig:
        return cls(served_model_name=ns.served_model_name or ns.model, model_path=ns.model,
                   api_key=ns.api_key, max_body_bytes=ns.max_body_bytes,
                   retry_after_s=ns.retry_after_s)


class ApiError(Exception):
    """An HTTP error answered with an OpenAI error object."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type_: str = "invalid_request_error", headers: dict | None = None) -> None:
        if param is not None and not message.startswith(param):
            message = f"{param}: {message}"
        super().__init__(message)
        self.status, self.message, self.param, self.type = status, message, param, type_
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.status)


class ClientDisconnected(Exception):
    """The client went away before the answer was ready."""


def validation_error(e: ValidationError) -> ApiError:
    """Map pydantic's first error to a 400 naming the (top-level) field."""
    err = e.errors(include_url=False)[0]
    loc = [str(part) for part in err["loc"]]
    if err["type"] == "json_invalid":
        return ApiError(400, f"malformed JSON: {err['msg']}")
    if not loc:
        return ApiError(400, f"the request body: {err['msg']}")
    where = ".".join(loc)
    return ApiError(400, f"{loc[0]}: {err['msg']} (at {where})", param=loc[0])


async def read_model(request: Request, model_cls: type[ModelT], max_bytes: int) -> ModelT:
    """Read the JSON body (at most `max_bytes`) into `model_cls`; ApiError on bad input."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"the request body exceeds {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"the request body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    try:
        return model_cls.model_validate_json(b"".join(chunks))
    except ValidationError as e:
        raise validation_error(e) from None


@dataclass
class ServingContext:
    """Everything a route needs: the engine, its tokenizer, metrics and the server config."""

    engine: AsyncLLM
    config: ServerConfig
    metrics: ServerMetrics
    tokenizer: object = field(init=False)

    def __post_init__(self) -> None:
        self.tokenizer = self.engine.get_tokenizer()

    def check_model(self, model: str | None) -> None:
        if model is not None and model not in (self.config.served_model_name,
                                               self.config.model_path):
            raise ApiError(404, f"the model {model!r} does not exist", param="model",
                           type_="model_not_found")

    def prompt_ids(self, prompt: str | list[int], param: str = "prompt",
                   add_special_tokens: bool = True) -> list[int]:
        """Tokenize (or check) a prompt: 400 when empty, out of vocabulary or too long."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens) if prompt else []
        else:
            ids = list(prompt)
            vocab = self.tokenizer.vocab_size
            if any(not 0 <= t < vocab for t in ids):
                raise ApiError(400, f"token ids must be in [0, {vocab})", param=param)
        if not ids:
            raise ApiError(400, "the prompt is empty", param=param)
        max_len = self.engine.max_model_len
        if len(ids) > max_len:
            raise ApiError(400, f"the prompt has {len(ids)} tokens, more than the model's "
                           f"context of {max_len} tokens", param=param)
        capacity = self.engine.kv_capacity_tokens
        if capacity is not None and len(ids) > capacity:
            raise ApiError(400, f"the prompt has {len(ids)} tokens, more than the "
                           f"{capacity} tokens of KV cache of any instance", param=param)
        return ids

    def sampling_error(self, e: SamplingParamsError) -> ApiError:
        return ApiError(400, str(e), param=e.field)  # str(e) starts with the field

    async def first_output(self, outputs: AsyncIterator[RequestOutput],
                           request: Request) -> RequestOutput:
        """The request's first output, with engine failures mapped to HTTP errors."""
        try:
            first = await race_disconnect(outputs.__anext__(), request)
        except ClientDisconnected:
            self.metrics.observe_aborted()
            raise
        except QueueFullError as e:
            self.metrics.observe_rejected(503)
            raise ApiError(503, str(e), type_="server_overloaded",
                           headers={"Retry-After": str(self.config.retry_after_s)}) from None
        except EngineDeadError as e:
            raise ApiError(503, str(e), type_="service_unavailable") from None
        except EngineError as e:
            raise ApiError(500, str(e), type_="server_error") from None
        except ValueError as e:  # e.g. a request id already in use
            raise ApiError(400, str(e)) from None
        check_output(first)
        return first

    async def follow(self, first: RequestOutput,
                     outputs: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
        """`first`, then the rest of the stream; records finished requests in the metrics.
        Closing this iterator early aborts the request."""
        finished = False
        try:
            output = first
            while True:
                finished = output.finished
                if finished:
                    self.metrics.observe_finished(output)
                yield output
                if finished:
                    return
                # NOTE: the engine stream always ends with a finished output (or raises).
                output = await outputs.__anext__()
        finally:
            if not finished:
                self.metrics.observe_aborted()
            await outputs.aclose()

    async def last_output(self, first: RequestOutput, outputs: AsyncIterator[RequestOutput],
                          request: Request) -> RequestOutput:
        """Run a non-streaming request to its end (aborted if the client disconnects)."""

        async def drain() -> RequestOutput:
            last = first
            async for output in self.follow(first, outputs):
                last = output
            return last

        try:
            last = await race_disconnect(drain(), request)
        except EngineError as e:
            raise ApiError(500, str(e), type_="server_error") from None
        check_output(last)
        return last


def check_output(output: RequestOutput) -> None:
    if output.error:
        raise ApiError(500, output.error, type_="server_error")
    if output.finish_reason == "ignored":
        raise ApiError(400, "the request cannot fit in the KV cache", param="prompt")


async def race_disconnect(awaitable: Awaitable[T], request: Request) -> T:
    """Await `awaitable` unless the client disconnects first (then cancel it and raise
    ClientDisconnected; cancelling an engine stream aborts its request)."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise ClientDisconnected()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
