"""Arrival processes follow the requested distributions (KS tests at a fixed seed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from evaluation.arrivals import ArrivalConfig, arrival_schedule, inter_arrival_gaps


def test_poisson_gaps_are_exponential() -> None:
    gaps = inter_arrival_gaps(ArrivalConfig("poisson", rate=200.0, seed=1), 4000)
    assert stats.kstest(gaps, "expon", args=(0, 1 / 200)).pvalue > 0.01
    assert abs(gaps.mean() - 1 / 200) < 0.05 / 200 * 5
    # and clearly not a gamma with cv 2 at the same rate
    shape = 0.25
    assert stats.kstest(gaps, "gamma", args=(shape, 0, 1 / (200 * shape))).pvalue < 1e-6


@pytest.mark.parametrize("cv", [0.5, 2.0])
def test_gamma_gaps_match_rate_and_cv(cv: float) -> None:
    rate, shape = 50.0, 1 / cv**2
    gaps = inter_arrival_gaps(ArrivalConfig("gamma", rate=rate, cv=cv, seed=2), 4000)
    assert stats.kstest(gaps, "gamma", args=(shape, 0, 1 / (rate * shape))).pvalue > 0.01
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.08)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.08)


def test_schedule_shape_uniform_inf_and_seed() -> None:
    s = arrival_schedule(ArrivalConfig("uniform", rate=4.0), 5)
    np.testing.assert_allclose(s, [0, 0.25, 0.5, 0.75, 1.0])
    assert not arrival_schedule(ArrivalConfig("poisson", rate=math.inf), 7).any()
    a = arrival_schedule(ArrivalConfig("poisson", rate=10.0, seed=3), 100)
    assert a[0] == 0 and np.all(np.diff(a) >= 0)
    np.testing.assert_array_equal(a, arrival_schedule(ArrivalConfig("poisson", 10.0, seed=3), 100))
    assert not np.array_equal(a, arrival_schedule(ArrivalConfig("poisson", 10.0, seed=4), 100))


def test_trace_replay_and_errors() -> None:
    s = arrival_schedule(ArrivalConfig("trace"), 3, [5.0, 5.5, 7.0, 9.0])
    np.testing.assert_allclose(s, [0, 0.5, 2.0])
    with pytest.raises(ValueError, match="arrival_s"):
        arrival_schedule(ArrivalConfig("trace"), 2, [1.0, None])
    with pytest.raises(ValueError, match="unknown arrival"):
        ArrivalConfig("weibull")
    with pytest.raises(ValueError, match="rate"):
        ArrivalConfig("poisson", rate=0)
