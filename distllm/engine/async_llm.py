"""Async streaming API over a stage engine: `AsyncLLM.generate` yields per-step RequestOutputs.

The engine runs in one dedicated thread (it owns every engine call); the asyncio side talks to it
through a command queue and gets outputs back on per-request asyncio queues:

    generate() --add--> commands --[engine thread: drain, step()]--> call_soon_threadsafe
        ^                                                                 |
        +------------- per-request asyncio.Queue <-- _dispatch() <--------+

The thread sleeps while the engine has no unfinished requests and wakes on a new command. An
exception in the engine thread fails the affected requests with its message (never hangs them).
The future disaggregated controller implements the same small interface.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from distllm.engine.outputs import RequestOutput
from distllm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from distllm.config import EngineConfig
    from distllm.engine.llm_engine import LLMEngine
    from distllm.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The engine failed a request (the message says why)."""


class EngineDeadError(EngineError):
    """The engine thread stopped; no request can be served."""


class QueueFullError(RuntimeError):
    """More requests wait for their first token than `max_queued_requests` allows."""


@dataclasses.dataclass
class _Stream:
    queue: asyncio.Queue  # RequestOutput | BaseException items, in step order
    has_output: bool = False  # got its first output (no longer counts as queued)


def merge_outputs(outputs: list[RequestOutput]) -> RequestOutput:
    """Several per-step outputs of one request as one: the latest state, all new text."""
    if len(outputs) == 1:
        return outputs[0]
    return dataclasses.replace(outputs[-1], new_text="".join(o.new_text for o in outputs))


class AsyncLLM:
    """Streams a stage engine's outputs to asyncio code.

    Args:
        engine: an `LLMEngine` (or anything with its add_request / abort_request / step /
            has_unfinished_requests / stats / tokenizer / config interface).
        max_queued_requests: requests admitted but still without a first token beyond which
            `generate` raises QueueFullError (None: unlimited).
        instance_name: label of this engine in `stats()` (metrics).
    """

    def __init__(self, engine: LLMEngine, max_queued_requests: int | None = None,
                 instance_name: str = "colocated-0") -> None:
        if max_queued_requests is not None and max_queued_requests < 0:
            raise ValueError(f"max_queued_requests must be >= 0, got {max_queued_requests}")
        self.engine = engine
        self.max_queued_requests = max_queued_requests
        self.instance_name = instance_name
        self._commands: queue.SimpleQueue = queue.SimpleQueue()  # ("add"|"abort"|"stop", args)
        self._wakeup = threading.Event()
        self._streams: dict[str, _Stream] = {}  # request id -> stream (event-loop side)
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dead_reason: str | None = None
        self._draining = False  # stop_accepting() was called (graceful shutdown)
        self._thread = threading.Thread(target=self._run_engine, name="distllm-engine",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_config(cls, config: EngineConfig, **kwargs: Any) -> AsyncLLM:
        from distllm.engine.llm_engine import LLMEngine

        return cls(LLMEngine(config), **kwargs)

    # ---- queries -------------------------------------------------------------------------
    def get_tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.config.model.max_seq_len

    @property
    def is_running(self) -> bool:
        """The engine serves new requests (False once it died, shut down or is draining)."""
        return (self._dead_reason is None and not self._draining
                and self._thread.is_alive())

    def stop_accepting(self) -> None:
        """Start draining: new requests get EngineDeadError (503); in-flight ones go on."""
        self._draining = True

    async def abort_all(self) -> int:
        """Abort every in-flight request (each ends with a finish_reason 'abort' output)."""
        request_ids = list(self._streams)
        for request_id in request_ids:
            await self.abort(request_id)
        return len(request_ids)

    @property
    def kv_capacity_tokens(self) -> int | None:
        """The longest prompt whose KV fits on some instance of every stage it passes through
        (None: unknown). Longer prompts can never run and are refused up front."""
        block_size = self.engine.config.cache.block_size
        best: dict[str, int] = {}  # stage kind -> largest live instance, in tokens
        for inst in self.stats()["instances"].values():
            if inst.get("alive", True) and "num_blocks" in inst:
                kind = "prefill" if inst.get("kind") == "prefill" else "decode"
                best[kind] = max(best.get(kind, 0), inst["num_blocks"] * block_size)
        return min(best.values()) if best else None

    @property
    def num_queued_requests(self) -> int:
        return sum(not s.has_output for s in self._streams.values())

    def stats(self) -> dict[str, Any]:
        """Server-side counts plus per-instance engine stats:
        {"num_requests", "num_queued_requests", "num_migrations_in_flight",
         "instances": {name: LLMEngine.stats() dict}}."""
        # NOTE: read from the event loop while the engine thread steps; the engine's stats are
        # plain len() reads of its queues, which is safe under the GIL.
        return {"num_requests": len(self._streams),
                "num_queued_requests": self.num_queued_requests,
                "num_migrations_in_flight": 0,
                "instances": {self.instance_name: self.engine.stats()}}

    # ---- requests ------------------------------------------------------------------------
    async def generate(self, prompt: str | list[int], sampling_params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Submit one request and yield its outputs until the finished one.

        Each yielded RequestOutput carries the cumulative `text`/`token_ids` plus the text added
        since the previous yield in `new_text` (outputs that piled up are merged). Leaving the
        loop early (break, cancellation, client disconnect) aborts the request and frees its KV
        blocks. Raises QueueFullError, EngineDeadError, or EngineError (engine-side failure).
        """
        request_id = request_id or f"req-{next(self._ids)}"
        stream = self._add(request_id, prompt, sampling_params)
        finished = False
        try:
            while not finished:
                items = [await stream.queue.get()]
                while not stream.queue.empty():
                    items.append(stream.queue.get_nowait())
                outputs = [i for i in items if isinstance(i, RequestOutput)]
                error = next((i for i in items if isinstance(i, BaseException)), None)
                if outputs:
                    output = merge_outputs(outputs)
                    finished = output.finished
                    yield output
                if error is not None and not finished:
                    finished = True
                    raise error
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._send("abort", request_id)

    async def abort(self, request_id: str) -> None:
        """Abort a request: its generator ends with a finished output (finish_reason abort)."""
        if request_id in self._streams:
            self._send("abort", request_id)

    def _add(self, request_id: str, prompt: str | list[int],
             sampling_params: SamplingParams) -> _Stream:
        if not self.is_running:
            reason = "the server is shutting down" if self._draining else self._dead_reason
            raise EngineDeadError(f"the engine is not running ({reason or 'stopped'})")
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        limit = self.max_queued_requests
        if limit is not None and self.num_queued_requests >= limit:
            raise QueueFullError(f"{self.num_queued_requests} requests are queued "
                                 f"(max_queued_requests={limit})")
        self._loop = asyncio.get_running_loop()
        stream = _Stream(asyncio.Queue())
        self._streams[request_id] = stream
        self._send("add", (request_id, prompt, sampling_params))
        return stream

    def _send(self, kind: str, args: Any) -> None:
        self._commands.put((kind, args))
        self._wakeup.set()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the engine thread (unfinished requests fail with EngineDeadError)."""
        if self._thread.is_alive():
            self._send("stop", None)
            self._thread.join(timeout_s)
        self._dead_reason = self._dead_reason or "shut down"

    # ---- event-loop side of the engine thread ------------------------------------------------
    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.has_output = True
                stream.queue.put_nowait(output)

    def _fail(self, request_ids: list[str], error: BaseException) -> None:
        for request_id in request_ids:
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.queue.put_nowait(error)

    def _fail_all(self, error: BaseException) -> None:
        self._fail(list(self._streams), error)

    def _post(self, callback: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)

    # ---- engine thread -------------------------------------------------------------------
    def _run_engine(self) -> None:
        try:
            while self._drain_commands():
                if not self.engine.has_unfinished_requests():
                    self._wakeup.wait()
                    self._wakeup.clear()
                    continue
                self._step()
        except Exception as e:  # noqa: BLE001 - the thread must report, never die silently
            logger.exception("engine thread failed")
            self._dead_reason = f"{type(e).__name__}: {e}"
        self._dead_reason = self._dead_reason or "shut down"
        self._post(self._fail_all, EngineDeadError(f"the engine stopped ({self._dead_reason})"))

    def _drain_commands(self) -> bool:
        """Apply queued adds/aborts; False once asked to stop."""
        while True:
            try:
                kind, args = self._commands.get_nowait()
            except queue.Empty:
                return True
            if kind == "stop":
                return False
            if kind == "abort":
                self.engine.abort_request(args)
            else:
                self._add_to_engine(*args)

    def _add_to_engine(self, request_id: str, prompt: str | list[int],
                       sampling_params: SamplingParams) -> None:
        try:
            self.engine.add_request(request_id, prompt, sampling_params)
        except (ValueError, TypeError) as e:
            self._post(self._fail, [request_id], EngineError(str(e)))

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:  # noqa: BLE001 - fail the in-flight requests, keep serving
            logger.exception("engine step failed; aborting the unfinished requests")
            self._post(self._fail_all, EngineError(f"engine step failed: {type(e).__name__}: {e}"))
            self._abort_everything()
            return
        if outputs:
            self._post(self._dispatch, outputs)

    def _abort_everything(self) -> None:
        """After a failed step: abort every unfinished request and drop their outputs."""
        self.engine.abort_request(list(self.engine.scheduler.requests))
        self.engine.step()  # reports the aborted requests; nobody listens any more
