"""`--sweep`: the highest request rate whose SLO attainment is at least the target, found by
bisection over real rounds (DistServe's goodput), plus the attainment-vs-rate curve.

Search: measure at `start_rate`; double (or halve) until the target is bracketed between a
passing and a failing rate (or `max_rate` / `min_rate` is reached), then bisect until the bracket
is within `rel_tol` of the failing rate or `max_iters` bisection rounds ran. The reported goodput
(the knee) is `metrics.max_rate_meeting` over every measured point: the last passing rate of the
curve, linearly interpolated towards the first failing one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from distllm.metrics import max_rate_meeting


@dataclass(frozen=True)
class SweepConfig:
    target: float = 0.9  # attainment share in (0, 1]
    start_rate: float = 1.0
    min_rate: float = 0.125
    max_rate: float = 1024.0
    max_iters: int = 6
    rel_tol: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError(f"target attainment must be in (0, 1], got {self.target}")
        if not 0 < self.min_rate <= self.start_rate <= self.max_rate:
            raise ValueError("need 0 < min_rate <= start_rate <= max_rate")
        if self.max_iters < 0 or self.rel_tol <= 0:
            raise ValueError("need max_iters >= 0 and rel_tol > 0")


@dataclass
class SweepResult:
    target: float
    points: list[tuple[float, float]] = field(default_factory=list)  # (rate, attainment), sorted
    goodput_rps: float = 0.0  # interpolated knee (max_rate_meeting)
    max_passing_rate: float | None = None  # highest measured rate that met the target
    min_failing_rate: float | None = None  # lowest measured rate that missed it

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "points": [list(p) for p in self.points],
            "goodput_rps": self.goodput_rps,
            "max_passing_rate": self.max_passing_rate,
            "min_failing_rate": self.min_failing_rate,
        }


async def _bracket(at: Callable[[float], Awaitable[bool]], cfg: SweepConfig) -> None:
    """Double (or halve) from start_rate until a passing and a failing rate are both measured."""
    rate = cfg.start_rate
    if await at(rate):
        while rate < cfg.max_rate:
            rate = min(2 * rate, cfg.max_rate)
            if not await at(rate):
                return
        return
    while rate > cfg.min_rate:
        rate = max(rate / 2, cfg.min_rate)
        if await at(rate):
            return


async def find_goodput(
    measure: Callable[[float], Awaitable[float]], cfg: SweepConfig
) -> SweepResult:
    """Bisection over `measure(rate) -> attainment` (each call one real round)."""
    points: dict[float, float] = {}  # rate -> attainment

    async def at(rate: float) -> bool:
        if rate not in points:
            points[rate] = await measure(rate)
        return points[rate] >= cfg.target

    await _bracket(at, cfg)
    for _ in range(cfg.max_iters):
        lo = max((r for r, a in points.items() if a >= cfg.target), default=None)
        hi = min(
            (r for r, a in points.items() if a < cfg.target and (lo is None or r > lo)),
            default=None,
        )
        if lo is None or hi is None or hi - lo <= cfg.rel_tol * hi:
            break
        await at((lo + hi) / 2)
    pts = sorted(points.items())
    passing = [r for r, a in pts if a >= cfg.target]
    failing = [r for r, a in pts if a < cfg.target]
    return SweepResult(
        cfg.target,
        pts,
        max_rate_meeting(pts, cfg.target),
        max(passing) if passing else None,
        min(failing) if failing else None,
    )
