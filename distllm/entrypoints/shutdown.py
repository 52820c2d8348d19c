"""Graceful shutdown of `distllm serve`: on SIGTERM / SIGINT every in-flight request still gets
a response.

`DrainingServer` is a `uvicorn.Server` whose shutdown first drains the engine:

    signal -> stop accepting (new requests: 503, /health: 503)
           -> wait up to `drain_timeout_s` for in-flight requests to finish
           -> abort the rest (each answered with finish_reason "abort")
           -> uvicorn's own shutdown (listeners closed, responses flushed) -> engine.shutdown()
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from distllm.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)
_POLL_S = 0.02


async def _wait_idle(engine: AsyncLLM, timeout_s: float) -> bool:
    """True once no request is in flight, False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while engine.stats()["num_requests"]:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


async def drain(engine: AsyncLLM, drain_timeout_s: float, abort_timeout_s: float = 5.0
                ) -> dict[str, int]:
    """Stop accepting, let in-flight requests finish for `drain_timeout_s`, abort the rest.
    Returns {"in_flight": at the start, "aborted": requests aborted, "left": still open}."""
    engine.stop_accepting()
    in_flight = engine.stats()["num_requests"]
    aborted = 0
    if not await _wait_idle(engine, drain_timeout_s):
        aborted = await engine.abort_all()
        await _wait_idle(engine, abort_timeout_s)
    left = engine.stats()["num_requests"]
    logger.info("drained: %d in flight, %d aborted, %d left", in_flight, aborted, left)
    return {"in_flight": in_flight, "aborted": aborted, "left": left}


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that drains `engine` (see `drain`) before shutting down."""

    def __init__(self, config: uvicorn.Config, engine: AsyncLLM,
                 drain_timeout_s: float = 10.0) -> None:
        if drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {drain_timeout_s}")
        super().__init__(config)
        self.engine, self.drain_timeout_s = engine, drain_timeout_s
        self.drain_result: dict[str, int] | None = None

    async def shutdown(self, sockets: list | None = None) -> None:
        logger.info("shutting down: draining in-flight requests (up to %.1f s)",
                    self.drain_timeout_s)
        self.drain_result = await drain(self.engine, self.drain_timeout_s)
        await super().shutdown(sockets)
