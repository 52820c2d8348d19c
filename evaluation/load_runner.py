"""One benchmark round: send requests on an arrival schedule through a backend, concurrently, and
collect what the client saw.

Dispatch: a single loop sleeps until each scheduled time (asyncio sleep to `spin_s` before it, then
yields to the event loop until the time is reached, which keeps lateness well under a millisecond
on an idle core) and starts one task per request. `dispatch_times` is when that task started
running; `start_time` of a record is when its HTTP request was sent, after any wait for a
`max_concurrency` slot. All times are seconds from the round's start (t0, perf_counter).
The cyclic garbage collector is paused during a round (`pause_gc`) and run once after it.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import numpy as np
from tqdm import tqdm

from dataset.common import DatasetRequest
from distllm.metrics import RequestRecord
from evaluation.backends import Backend, BackendRequest, BackendResult


@dataclass(frozen=True)
class RunnerConfig:
    max_concurrency: int | None = None  # None = unbounded
    ignore_eos: bool = True
    spin_s: float = 0.002  # busy-yield window before each scheduled send
    request_timeout_s: float = 600.0  # max silence on one stream
    show_progress: bool = False
    pause_gc: bool = True  # NOTE: a cyclic-GC pass can stall the dispatch loop for milliseconds

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.spin_s < 0 or self.request_timeout_s <= 0:
            raise ValueError("spin_s must be >= 0 and request_timeout_s > 0")


@dataclass
class RoundResult:
    records: list[RequestRecord]
    results: list[BackendResult]  # raw backend answers (lifecycle events, reported lengths)
    scheduled: list[float]  # planned send time per request
    dispatch_times: list[float]  # when each request's task started
    duration_s: float  # t0 -> last request finished
    start_unix: float  # wall-clock time of t0
    extra: dict = field(default_factory=dict)

    @property
    def lateness_s(self) -> list[float]:
        return [d - s for d, s in zip(self.dispatch_times, self.scheduled, strict=True)]


async def sleep_until(target: float, spin_s: float) -> None:
    """Sleep until perf_counter() >= target: a timer sleep, then yields for the last spin_s."""
    delay = target - time.perf_counter()
    if delay > spin_s:
        await asyncio.sleep(delay - spin_s)
    while time.perf_counter() < target:
        await asyncio.sleep(0)


def _to_record(req: DatasetRequest, sent: float, res: BackendResult, t0: float) -> RequestRecord:
    return RequestRecord(
        prompt_len=req.prompt_len,
        output_len=req.output_len,
        start_time=sent - t0,
        end_time=res.end_time - t0,
        token_timestamps=[t - t0 for t in res.token_timestamps],
        error=res.error,
    )


class _Round:
    """State of one round while it runs (results are filled in as requests finish)."""

    def __init__(
        self, backend: Backend, reqs: Sequence[DatasetRequest], cfg: RunnerConfig, bar: tqdm
    ) -> None:
        n = len(reqs)
        self.backend, self.reqs, self.cfg, self.bar = backend, reqs, cfg, bar
        self.records: list[RequestRecord | None] = [None] * n
        self.results: list[BackendResult | None] = [None] * n
        self.dispatch = [0.0] * n
        self.sem = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
        self.t0 = 0.0

    async def one(self, i: int, session: aiohttp.ClientSession) -> None:
        self.dispatch[i] = time.perf_counter() - self.t0
        req = self.reqs[i]
        breq = BackendRequest(req.prompt, req.prompt_len, req.output_len, self.cfg.ignore_eos)
        if self.sem is not None:
            await self.sem.acquire()
        try:
            sent = time.perf_counter()
            res = await self.backend.generate(session, breq)
        finally:
            if self.sem is not None:
                self.sem.release()
        self.results[i], self.records[i] = res, _to_record(req, sent, res, self.t0)
        self.bar.update(1)

    async def run(self, sched: list[float]) -> tuple[float, float]:
        """Dispatch on schedule and wait for all; returns (start_unix, duration_s)."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.cfg.request_timeout_s)
        connector = aiohttp.TCPConnector(limit=self.cfg.max_concurrency or 0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            start_unix, self.t0 = time.time(), time.perf_counter()
            tasks = []
            for i, t in enumerate(sched):
                await sleep_until(self.t0 + t, self.cfg.spin_s)
                tasks.append(asyncio.create_task(self.one(i, session)))
            await asyncio.gather(*tasks)
            return start_unix, time.perf_counter() - self.t0


async def run_round(
    backend: Backend,
    reqs: Sequence[DatasetRequest],
    schedule: Sequence[float],
    cfg: RunnerConfig,
    desc: str = "",
) -> RoundResult:
    """Send reqs[i] at t0 + schedule[i]; wait for every answer. Failures become error records."""
    if len(schedule) != len(reqs):
        raise ValueError(f"{len(reqs)} requests but {len(schedule)} scheduled times")
    sched = [float(x) for x in np.asarray(schedule, dtype=float)]
    bar = tqdm(total=len(reqs), desc=desc or None, disable=not cfg.show_progress, leave=False)
    state = _Round(backend, reqs, cfg, bar)
    if cfg.pause_gc:
        gc.collect()
        gc.disable()
    try:
        start_unix, duration = await state.run(sched)
    finally:
        bar.close()
        if cfg.pause_gc:
            gc.enable()
            gc.collect()
    return RoundResult(state.records, state.results, sched, state.dispatch, duration, start_unix)
