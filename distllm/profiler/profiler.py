"""`profile_model`: times the grid on a step timer (tqdm progress), fits the latency model, measures
KV capacity and transfer bandwidth, and builds a `distllm-profile-v1` dict simdist loads as is."""
from __future__ import annotations

import logging
import platform
import statistics
from dataclasses import dataclass, field

from distllm.profiler.fit import DecodeSample, FitResult, PrefillSample, fit_profile_entry
from distllm.profiler.grid import ProfileGridConfig, decode_step, prefill_step
from distllm.profiler.timers import StepTimer

logger = logging.getLogger(__name__)
PROFILE_FORMAT = "distllm-profile-v1"
# KV transfers timed: a small one (latency) and one of ~TRANSFER_LARGE_BYTES (rate from both),
# so the bytes of the large one dwarf the jitter of the fixed cost
TRANSFER_SMALL_BLOCKS, TRANSFER_MIN_LARGE_BLOCKS = 4, 64
TRANSFER_LARGE_BYTES = 32 << 20


@dataclass
class ProfileRun:
    """What one profiling run measured (ms) and fitted."""

    prefill: list[PrefillSample] = field(default_factory=list)
    decode: list[DecodeSample] = field(default_factory=list)
    fit: FitResult | None = None
    kv_capacity_tokens: int = 0
    transfer: dict = field(default_factory=dict)  # bytes/seconds per size, gb_s, latency_ms
    host: dict = field(default_factory=dict)  # the profile's host section (contention.py)


def time_grid(timer: StepTimer, grid: ProfileGridConfig, vocab_size: int,
              progress: bool = True) -> ProfileRun:
    """Median step time of every grid point (prefill points, then decode points). The points
    take turns: after `grid.warmup` steps of each, `grid.repeats` rounds time every point once,
    so a burst of other load on the host costs many points one sample each instead of a few
    points all of theirs (which bends the fit)."""
    from tqdm import tqdm

    steps = [("prefill", b, n, prefill_step(b, n, grid, vocab_size))
             for b, n in grid.prefill_points()]
    steps += [("decode", b, n, decode_step(b, n, grid, vocab_size))
              for b, n in grid.decode_points()]
    times: list[list[float]] = [[] for _ in steps]
    with tqdm(total=len(steps) * (grid.warmup + grid.repeats), desc="profiling steps",
              disable=not progress, unit="step") as bar:
        for *_, out in steps:
            for _ in range(grid.warmup):
                timer.time_step(out)
                bar.update()
        for _ in range(grid.repeats):
            for i, (*_, out) in enumerate(steps):
                times[i].append(timer.time_step(out))
                bar.update()
    run = ProfileRun()
    for (kind, batch, n, _), ts in zip(steps, times, strict=True):
        ms = 1e3 * statistics.median(ts)
        if kind == "prefill":
            run.prefill.append(([n] * batch, ms))
        else:
            run.decode.append((batch, batch * n, ms))
    return run


def transfer_sizes(block_bytes: int, capacity_blocks: int) -> tuple[int, int]:
    """(small, large) KV blocks per timed transfer: the large one moves ~TRANSFER_LARGE_BYTES
    (at least TRANSFER_MIN_LARGE_BLOCKS blocks, at most what the cache holds)."""
    large = max(TRANSFER_MIN_LARGE_BLOCKS, -(-TRANSFER_LARGE_BYTES // max(block_bytes, 1)))
    large = max(2, min(large, capacity_blocks))
    return min(TRANSFER_SMALL_BLOCKS, large // 2), large


def measure_transfer(timer: StepTimer, block_size: int, repeats: int = 7) -> dict:
    """Median transfer time at two sizes: bandwidth from the difference (fixed costs cancel),
    latency = the small transfer's time minus its bytes at that bandwidth. Where the large
    transfer was not slower (jitter), the rate is the large one's bytes over its time and the
    latency 0 (noted)."""
    block_bytes = timer.config.model.kv_bytes_per_token * block_size
    small, large = transfer_sizes(block_bytes, timer.kv_capacity_tokens() // block_size)
    sizes = {n: timer.transfer_seconds(n, repeats) for n in (small, large)}
    (b0, t0), (b1, t1) = sizes[small], sizes[large]
    out = {"block_size": block_size,
           "points": [{"blocks": n, "bytes": b, "seconds": s} for n, (b, s) in sizes.items()]}
    if t1 > t0 and b1 > b0:
        gb_s = (b1 - b0) / (t1 - t0) / 1e9
        return {"gb_s": gb_s, "latency_ms": max(0.0, 1e3 * (t0 - b0 / (gb_s * 1e9))), **out}
    logger.warning("KV transfer: %d blocks took no longer than %d (%.2f vs %.2f ms): rate from "
                   "the large transfer alone", large, small, 1e3 * t1, 1e3 * t0)
    return {"gb_s": b1 / max(t1, 1e-9) / 1e9, "latency_ms": 0.0,
            "note": "large transfer not slower than the small: rate = its bytes / its time",
            **out}


def measure_host(timer: StepTimer, grid: ProfileGridConfig) -> dict:
    """The host section (distllm.profiler.contention) of a real CPU timer's config: cores and
    the contention of two tp1 workers; cores only where contention cannot be measured."""
    from distllm.profiler.contention import ContentionConfig, host_section, measure_contention

    cfg = ContentionConfig(repeats=max(4, 2 * grid.repeats), warmup=grid.warmup)
    try:
        return host_section(measure_contention(timer.config, cfg))
    except (RuntimeError, ValueError) as e:
        logger.warning("contention not measured (%s): host section has cores only", e)
        return host_section()


def _is_cpu_timer(timer: StepTimer) -> bool:
    from distllm.profiler.timers import InProcessTimer, RayTimer

    config = timer.config
    return (isinstance(timer, InProcessTimer | RayTimer) and config.device == "cpu"
            and config.parallel.world_size == 1)


def profile_model(timer: StepTimer, grid: ProfileGridConfig, progress: bool = True,
                  measure_kv_transfer: bool = True,
                  measure_host_section: bool | None = None) -> ProfileRun:
    """Time the grid, fit, and measure the KV figures of `timer`'s instance, and (default:
    for a real tp1 CPU timer) the host section: cores and step contention."""
    vocab = timer.config.model.dims.vocab_size
    run = time_grid(timer, grid, vocab, progress)
    run.fit = fit_profile_entry(run.prefill, run.decode)
    run.kv_capacity_tokens = timer.kv_capacity_tokens()
    if measure_kv_transfer:
        run.transfer = measure_transfer(timer, grid.block_size)
    if measure_host_section is None:
        measure_host_section = _is_cpu_timer(timer)
    if measure_host_section:
        run.host = measure_host(timer, grid)
    logger.info("fit residuals: prefill max %.1f %% rms %.1f %%, decode max %.1f %% rms %.1f %%",
                100 * run.fit.prefill.max_rel, 100 * run.fit.prefill.rms_rel,
                100 * run.fit.decode.max_rel, 100 * run.fit.decode.rms_rel)
    return run


def to_profile(run: ProfileRun, model_name: str, kv_bytes_per_token: int, tp: int, pp: int,
               hardware: str, engine: str = "distllm", source: str = "") -> dict:
    """A `distllm-profile-v1` dict (simdist.profile.LatencyProfile.from_dict reads it)."""
    assert run.fit is not None, "fit first"
    interconnect, overhead = {}, {"iteration_ms": 0.0, "per_token_ms": 0.0,
                                  "prefill_stage_ms": 0.0, "transfer_ms": 0.0}
    if run.transfer:
        interconnect = {"nvlink_gb_s": run.transfer["gb_s"], "network_gb_s": run.transfer["gb_s"]}
        overhead["transfer_ms"] = run.transfer["latency_ms"]
    # NOTE: the measured decode steps too: simdist interpolates them (simdist.profile.DecodeTable)
    # where the two fitted regimes leave up to ~10 % at some grid points
    entry = {**run.fit.entry, "decode_points": [[b, n, ms] for b, n, ms in run.decode]}
    model = {"kv_bytes_per_token": kv_bytes_per_token, "tp": {str(tp): entry},
             "kv_capacity_tokens": {f"{tp}x{pp}": run.kv_capacity_tokens}}
    out = {"format": PROFILE_FORMAT, "hardware": hardware, "engine": engine,
           "source": source or f"distllm profile on {platform.node() or 'this host'}",
           "overhead": overhead,
           "interconnect": interconnect, "models": {model_name: model},
           "fit": {"prefill": run.fit.prefill.to_json(), "decode": run.fit.decode.to_json(),
                   "transfer": run.transfer,
                   "samples": {"prefill": run.prefill, "decode": run.decode}}}
    if run.host:
        out["host"] = run.host
    return out
