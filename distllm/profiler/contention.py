"""Step contention between two workers on one host, and the `host` profile section of `distllm
profile`.

On a CPU host each worker owns a core, yet two busy workers still slow each other: a decode step
streams every weight of the model from memory, a prefill fills the caches, and both share the
memory bandwidth and the last-level cache. `measure_contention` times a prefill step alone and
while another process runs decode steps back to back, and the reverse, in alternating blocks
(drift of a shared host cancels), and returns simdist's coefficients (simdist.host):

    contention_kind = median contended step / (median alone step * fair share) - 1
    fair share      = max(1, (2 t + other) / cores) / max(1, (t + other) / cores)
                      (t threads per worker; other: cores other processes kept busy)

The fair share is what simdist's cores term already gives (simdist.host, other load as its
background_cores). Other processes inflate the contended steps more than the alone ones (3 busy
processes on 2 cores): the cores they kept busy are measured (`other_cores`, /proc/stat minus
both workers' CPU), taken out by the fair share, and a run above QUIET_CORES is flagged (the
scheduler shares 3 processes on 2 cores less evenly than the fair share says).

`host_section` is the `host` section `distllm profile` writes: the host's cores plus these
coefficients. It leaves out what needs a serving frontend (CPU per step / token / request of the
API server and load generator, their TTFT latency, other load): those come from a round against
`distllm serve` (distllm.profiler.host, evaluation/validate_simulator.py).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from distllm.profiler.grid import ProfileGridConfig, decode_step, prefill_step

if TYPE_CHECKING:
    from distllm.config import EngineConfig

logger = logging.getLogger(__name__)
_IDLE, _STOP = 0, -1
_KINDS = {"prefill": 1, "decode": 2}  # background mode: which step it runs back to back
_START_TIMEOUT_S = 600.0
QUIET_CORES = 0.25  # other load (cores) above which a measurement is flagged


@dataclass(frozen=True)
class ContentionConfig:
    """Which steps contend and how often they are timed. The defaults are the demo workload's
    typical steps: a prompt of ~200 tokens, a decode batch of 16 at ~250 tokens of context."""

    prompt_len: int = 192
    decode_batch: int = 16
    context_len: int = 256
    repeats: int = 10  # timed steps per block
    blocks: int = 2  # alone / contended block pairs per kind
    warmup: int = 2
    threads: int = 1  # torch threads per worker

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < (0 if name == "warmup" else 1):
                raise ValueError(f"contention {name} must be >= 1 (warmup >= 0), got {value}")

    def steps(self, block_size: int, vocab_size: int) -> dict[str, object]:
        """kind -> the SchedulerOutput of that kind's step."""
        grid = ProfileGridConfig(block_size=block_size)
        return {"prefill": prefill_step(1, self.prompt_len, grid, vocab_size),
                "decode": decode_step(self.decode_batch, self.context_len, grid, vocab_size)}

    def num_blocks_needed(self, block_size: int) -> int:
        per = -(-self.context_len // block_size)
        return max(self.decode_batch * per, -(-self.prompt_len // block_size))

    def fitted(self, num_blocks: int, block_size: int) -> ContentionConfig:
        """This config with its decode batch cut to what a cache of num_blocks holds."""
        per = -(-self.context_len // block_size)
        return replace(self, decode_batch=max(1, min(self.decode_batch, num_blocks // per)))


def _background(config: EngineConfig, cfg: ContentionConfig, mode: object,
                idle: object) -> None:
    """Child process: a worker that runs steps of kind `mode.value` back to back, sets `idle`
    while mode is _IDLE, and exits at _STOP."""
    from distllm.profiler.timers import InProcessTimer

    timer = InProcessTimer(config, cfg.threads)
    steps = cfg.steps(config.cache.block_size, config.model.dims.vocab_size)
    outs = {_KINDS[k]: s for k, s in steps.items()}
    for out in outs.values():
        timer.time_step(out)  # warm both kinds before the first timed block
    while (k := mode.value) != _STOP:
        if k == _IDLE:
            idle.set()
            time.sleep(0.002)
            continue
        idle.clear()
        timer.time_step(outs[k])


def _set_mode(proc: object, mode: object, idle: object, value: int) -> None:
    """Switch the background worker and wait until it follows (idle, or inside a step)."""
    mode.value = value
    deadline = time.monotonic() + 60.0
    while idle.is_set() if value != _IDLE else not idle.wait(0.05):
        if not proc.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the contention background worker stopped or hung")
        if value != _IDLE:
            time.sleep(0.0005)


def _timed(timer: object, out: object, n: int) -> list[float]:
    return [1e3 * timer.time_step(out) for _ in range(n)]


def measure_contention(config: EngineConfig, cfg: ContentionConfig | None = None,
                       cores: int | None = None) -> dict:
    """Coefficients `contention_prefill` / `contention_decode` (simdist.host) of two tp1
    workers of `config` on this host, with the medians they come from under `measured`.
    The timed worker runs in this process, the other kind's steps in a spawned one."""
    from distllm.profiler.timers import InProcessTimer

    cfg = cfg or ContentionConfig()
    if config.parallel.world_size != 1:
        raise ValueError("contention is measured between two tp = pp = 1 workers")
    cores = int(cores or os.cpu_count() or 1)
    timer = InProcessTimer(config, cfg.threads)
    cfg = cfg.fitted(timer.num_blocks, config.cache.block_size)
    if timer.num_blocks < cfg.num_blocks_needed(config.cache.block_size):
        raise ValueError(f"contention steps need {cfg.num_blocks_needed(config.cache.block_size)}"
                         f" KV blocks, the cache has {timer.num_blocks}")
    steps = cfg.steps(config.cache.block_size, config.model.dims.vocab_size)
    ctx = mp.get_context("spawn")
    mode, idle = ctx.Value("i", _IDLE), ctx.Event()
    proc = ctx.Process(target=_background, args=(config, cfg, mode, idle), daemon=True)
    proc.start()
    try:
        if not idle.wait(_START_TIMEOUT_S):
            raise RuntimeError("the contention background worker did not start")
        before = _cpu_now(proc.pid)
        times = {k: _alone_and_contended(timer, steps, k, cfg, proc, mode, idle)
                 for k in steps}
        other = _other_cores(before, _cpu_now(proc.pid))
    finally:
        mode.value = _STOP
        proc.join(30.0)
        if proc.is_alive():
            proc.kill()
    fair = fair_share(cfg.threads, other, cores)
    out = {f"contention_{k}": max(0.0, c / (a * fair) - 1.0) for k, (a, c) in times.items()}
    out["measured"] = {**{f"{k}_{w}_ms": v for k, (a, c) in times.items()
                          for w, v in (("alone", a), ("contended", c))},
                       "cores": cores, "fair_share": fair, "other_cores": other,
                       **asdict(cfg)}
    if other > QUIET_CORES:
        logger.warning("other processes kept %.2f cores busy while contention was measured: "
                       "the coefficients include their load", other)
    return out


def fair_share(threads: int, other: float, cores: int) -> float:
    """How much longer the fair share of the cores alone makes a contended step than an
    alone one (simdist.host's max(1, demand / cores) at both demands)."""
    return max(1.0, (2 * threads + other) / cores) / max(1.0, (threads + other) / cores)


def _cpu_now(child_pid: int) -> tuple[float, float, float]:
    """(host busy CPU s, this process's + the child's CPU s, wall s)."""
    import resource

    from distllm.profiler.host import host_busy_s, proc_stat

    ru = resource.getrusage(resource.RUSAGE_SELF)
    child = proc_stat(child_pid)
    own = ru.ru_utime + ru.ru_stime + (child[2] if child is not None else 0.0)
    return host_busy_s(), own, time.monotonic()


def _other_cores(before: tuple, after: tuple) -> float:
    """Cores other processes kept busy between two _cpu_now readings (0 off Linux)."""
    wall = max(after[2] - before[2], 1e-9)
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall


def _alone_and_contended(timer: object, steps: dict, kind: str, cfg: ContentionConfig,
                         proc: object, mode: object, idle: object) -> tuple[float, float]:
    """(median ms alone, median ms while the background runs the other kind's steps)."""
    other = _KINDS["decode" if kind == "prefill" else "prefill"]
    out, alone, contended = steps[kind], [], []
    _timed(timer, out, cfg.warmup)
    for _ in range(cfg.blocks):
        _set_mode(proc, mode, idle, _IDLE)
        alone += _timed(timer, out, cfg.repeats)
        _set_mode(proc, mode, idle, other)
        contended += _timed(timer, out, cfg.repeats)
    _set_mode(proc, mode, idle, _IDLE)
    logger.info("%s step: %.1f ms alone, %.1f ms contended", kind, statistics.median(alone),
                statistics.median(contended))
    return statistics.median(alone), statistics.median(contended)


def host_section(contention: dict | None = None, cores: int | None = None) -> dict:
    """The `host` section `distllm profile` writes: cores (+ contention coefficients)."""
    out: dict = {"cores": int(cores or os.cpu_count() or 1)}
    measured = {"how": "distllm profile: cores of this host; frontend CPU, frontend latency "
                       "and other load are not measured here (they need a serving round: "
                       "distllm.profiler.host)"}
    if contention:
        out.update({k: v for k, v in contention.items() if k.startswith("contention_")})
        measured["contention"] = contention.get("measured", {})
    out["measured"] = measured
    return out
