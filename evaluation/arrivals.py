"""Arrival processes of the load generator, picked by name: seeded schedules of send times.

    poisson  exponential inter-arrival times (cv = 1)
    gamma    gamma inter-arrival times with coefficient of variation `cv` (shape 1/cv^2)
    uniform  a constant interval 1/rate (cv = 0), as in DistServe's "uniform" process
    trace    the dataset's own `arrival_s` values (trace replay)
The first request is sent at t = 0; schedule[i] = sum of the first i gaps. An infinite rate sends
everything at t = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# name -> gaps(n, rate, cv, rng): [n] float64 seconds
_GAPS: dict[str, Callable[[int, float, float, np.random.Generator], np.ndarray]] = {}


def register(name: str) -> Callable:
    def wrap(fn: Callable) -> Callable:
        _GAPS[name] = fn
        return fn

    return wrap


@register("poisson")
def _poisson(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    return rng.exponential(1.0 / rate, size=n)


@register("gamma")
def _gamma(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    shape = 1.0 / (cv * cv)
    return rng.gamma(shape, 1.0 / (rate * shape), size=n)


@register("uniform")
def _uniform(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    return np.full(n, 1.0 / rate)


ARRIVAL_PROCESSES = (*_GAPS, "trace")


@dataclass(frozen=True)
class ArrivalConfig:
    process: str = "poisson"
    rate: float = 1.0  # requests per second; math.inf = all at once
    cv: float = 1.0  # only used by gamma
    seed: int = 0

    def __post_init__(self) -> None:
        if self.process not in ARRIVAL_PROCESSES:
            raise ValueError(
                f"unknown arrival process {self.process!r}; "
                f"choose from {', '.join(ARRIVAL_PROCESSES)}"
            )
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0 (inf for all at once), got {self.rate}")
        if self.process == "gamma" and not self.cv > 0:
            raise ValueError(f"gamma needs cv > 0, got {self.cv}")


def inter_arrival_gaps(cfg: ArrivalConfig, n: int) -> np.ndarray:
    """[n] seconds between consecutive requests (the last gap is never used by a schedule)."""
    if cfg.process == "trace":
        raise ValueError("trace arrivals come from the dataset, not from a process")
    if math.isinf(cfg.rate):
        return np.zeros(n)
    return _GAPS[cfg.process](n, cfg.rate, cfg.cv, np.random.default_rng(cfg.seed))


def arrival_schedule(
    cfg: ArrivalConfig, n: int, trace_s: Sequence[float | None] | None = None
) -> np.ndarray:
    """[n] send times in seconds from the round's start, non-decreasing, starting at 0
    (trace: the given times, shifted so the first is 0)."""
    if n <= 0:
        return np.zeros(0)
    if cfg.process == "trace":
        if trace_s is None or len(trace_s) < n or any(t is None for t in trace_s[:n]):
            raise ValueError("--arrival trace needs an arrival_s on every dataset record")
        t = np.sort(np.asarray(trace_s[:n], dtype=float))
        return t - t[0]
    gaps = inter_arrival_gaps(cfg, n)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])
