"""Goodput bisection on a known attainment curve (no server)."""

from __future__ import annotations

import asyncio

import pytest

from distllm.metrics import max_rate_meeting
from evaluation.sweep import SweepConfig, find_goodput


def _run(curve, cfg: SweepConfig):  # noqa: ANN001, ANN202
    calls: list[float] = []

    async def measure(rate: float) -> float:
        calls.append(rate)
        return curve(rate)

    return asyncio.run(find_goodput(measure, cfg)), calls


def test_bisection_brackets_the_knee() -> None:
    cfg = SweepConfig(target=0.9, start_rate=1.0, max_iters=20, rel_tol=0.02)
    res, calls = _run(lambda r: 0.95 if r <= 7.3 else 0.5, cfg)
    assert calls[:4] == [1.0, 2.0, 4.0, 8.0]
    assert res.max_passing_rate <= 7.3 < res.min_failing_rate
    assert res.min_failing_rate - res.max_passing_rate <= 0.02 * res.min_failing_rate
    assert res.goodput_rps == pytest.approx(max_rate_meeting(res.points, 0.9))
    assert res.max_passing_rate <= res.goodput_rps < res.min_failing_rate
    assert [p[0] for p in res.points] == sorted(calls)


def test_halving_down_and_limits() -> None:
    cfg = SweepConfig(target=0.9, start_rate=16.0, min_rate=0.5, max_rate=64, max_iters=0)
    res, calls = _run(lambda r: 1.0 if r <= 3 else 0.0, cfg)
    assert calls == [16.0, 8.0, 4.0, 2.0]
    assert res.max_passing_rate == 2.0 and res.min_failing_rate == 4.0
    res, calls = _run(lambda r: 1.0, cfg)
    assert calls == [16.0, 32.0, 64.0] and res.goodput_rps == 64.0
    res, _ = _run(lambda r: 0.0, cfg)
    # nothing passes: max_rate_meeting interpolates from its (0, 100 %) anchor to min_rate
    assert res.goodput_rps == pytest.approx(0.5 * 0.1) and res.max_passing_rate is None


def test_bad_sweep_config() -> None:
    with pytest.raises(ValueError):
        SweepConfig(target=1.5)
    with pytest.raises(ValueError):
        SweepConfig(start_rate=0.01, min_rate=0.1)
