"""Goodput of one configuration: the highest per-GPU request rate whose SLO attainment still
meets the target, found by bracketing (doubling / halving) then bisection on the rate.

Every rate sees the same requests (common random numbers, see workload.py), so attainment is a
near-monotone function of rate and bisection converges to DistServe's goodput definition.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from simdist.cluster import ClusterSpec, simulate
from simdist.profile import LatencyProfile
from simdist.results import SimResult
from simdist.workload import Workload


@dataclass(frozen=True)
class GoodputTask:
    """What to search: a cluster, the SLOs checked (None = not checked) and the target."""

    label: str
    spec: ClusterSpec
    ttft_slo_ms: float | None
    tpot_slo_ms: float | None
    target: float = 0.9
    guess_per_gpu: float = 1.0
    rel_tol: float = 0.02
    num_requests: int | None = None  # prefix of the workload to run (None: all)

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError(f"attainment target must be in (0, 1], got {self.target}")
        if self.guess_per_gpu <= 0 or self.rel_tol <= 0:
            raise ValueError("guess_per_gpu and rel_tol must be positive")


@dataclass
class GoodputResult:
    label: str
    spec: ClusterSpec
    per_gpu_rps: float  # highest measured per-GPU rate meeting the target (0 if none)
    binding: str  # "ttft" or "tpot": the SLO that fails first above the goodput
    attainment: float  # at the goodput rate
    p90_ttft_ms: float
    p90_tpot_ms: float
    points: list[tuple[float, float]] = field(default_factory=list)  # (per-GPU rate, attain.)

    @property
    def num_gpus(self) -> int:
        return self.spec.num_gpus


def zero_load_attainment(task: GoodputTask, profile: LatencyProfile,
                         wl: Workload) -> tuple[float, str]:
    """Upper bound on attainment at any rate: each request alone on an idle instance (prefill
    batch of one, decode batch of one at its final context). No queueing, no transfer."""
    inst = task.spec.instances[0]
    cost = profile.stage_cost(task.spec.model, inst.tp, inst.pp)
    n = len(wl) if task.num_requests is None else min(task.num_requests, len(wl))
    ttft_max = float("inf") if task.ttft_slo_ms is None else task.ttft_slo_ms * 1e-3
    tpot_max = float("inf") if task.tpot_slo_ms is None else task.tpot_slo_ms * 1e-3
    has_prefill = inst.role != "decode"
    ok = miss_ttft = miss_tpot = 0
    for p, o in zip(wl.prompt_lens[:n], wl.output_lens[:n], strict=True):
        if has_prefill and cost.prefill_stage(p, p * p) * cost.pp > ttft_max:
            miss_ttft += 1
        elif o > 1 and inst.role != "prefill" and cost.decode(1, p) > tpot_max:
            miss_tpot += 1
        else:
            ok += 1
    return ok / n, "ttft" if miss_ttft >= miss_tpot else "tpot"


def search_goodput(task: GoodputTask, profile: LatencyProfile, workload: Workload,
                   max_sims: int = 30) -> GoodputResult:
    """Bracket then bisect the per-GPU rate; stops at rel_tol or after max_sims runs. Returns
    0 without simulating when even an idle system misses the target."""
    gpus = task.spec.num_gpus
    cache: dict[float, tuple[float, SimResult]] = {}
    bound, binding = zero_load_attainment(task, profile, workload)
    if bound < task.target:
        return GoodputResult(task.label, task.spec, 0.0, binding, bound, float("nan"),
                             float("nan"), [])

    def attain(rate: float) -> float:
        res = simulate(task.spec, profile, workload, rate * gpus, None, task.num_requests)
        cache[rate] = (res.attainment(task.ttft_slo_ms, task.tpot_slo_ms), res)
        return cache[rate][0]

    lo, hi = _bracket(task, attain, lambda: len(cache) < max_sims)
    while hi is not None and lo > 0 and hi - lo > task.rel_tol * hi and len(cache) < max_sims:
        mid = (lo + hi) / 2
        if attain(mid) >= task.target:
            lo = mid
        else:
            hi = mid
    return _result(task, lo, hi, cache)


def _bracket(task: GoodputTask, attain: Callable[[float], float],
             budget_left: Callable[[], bool]) -> tuple[float, float | None]:
    """(highest passing rate or 0, lowest failing rate or None). Steps away from the guess
    by a factor starting at 1.25 and squaring each time, so a good guess brackets tightly."""
    target, guess, r, f = task.target, task.guess_per_gpu, task.guess_per_gpu, 1.25
    if attain(r) < target:
        hi = r
        while r > guess / 64 and budget_left():
            r, f = r / f, f * f
            if attain(r) >= target:
                return r, hi
            hi = r
        return 0.0, hi
    lo = r
    # NOTE: capped at 256x the guess: a run that never saturates has too few requests.
    while r < 256 * guess and budget_left():
        r, f = r * f, f * f
        if attain(r) < target:
            return lo, r
        lo = r
    return lo, None


def _result(task: GoodputTask, lo: float, hi: float | None,
            cache: dict[float, tuple[float, SimResult]]) -> GoodputResult:
    points = sorted((rate, a) for rate, (a, _) in cache.items())
    binding = "ttft" if task.tpot_slo_ms is None else "tpot" if task.ttft_slo_ms is None else ""
    if hi is not None and not binding:
        fail = cache[hi][1]
        a_ttft = fail.attainment(task.ttft_slo_ms, None)
        binding = "ttft" if a_ttft < fail.attainment(None, task.tpot_slo_ms) else "tpot"
    if lo <= 0:
        return GoodputResult(task.label, task.spec, 0.0, binding, 0.0, float("nan"),
                             float("nan"), points)
    att, res = cache[lo]
    pct = res.percentiles_ms()
    return GoodputResult(task.label, task.spec, lo, binding, att, pct["p90_ttft_ms"],
                         pct["p90_tpot_ms"], points)
