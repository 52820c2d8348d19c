"""distllm.profiler.jitter: the host jitter (simdist.host) fitted to a timed unit of work."""
from __future__ import annotations

import numpy as np
import pytest

from distllm.profiler.jitter import JitterConfig, fit_ou, measure_jitter
from simdist.host import HostJitter


def _series(sd: float, tau_s: float, seed: int, seconds: float = 30.0,
            white: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Back-to-back 3 ms units stretched by simdist's own OU jitter and white timing noise."""
    jitter, rng = HostJitter(sd, tau_s, seed), np.random.default_rng(seed)
    t, starts, durations = 0.0, [], []
    while t < seconds:
        d = 0.003 * jitter.factor(t) * float(np.exp(rng.normal(0.0, white)))
        starts.append(t)
        durations.append(d)
        t += d
    return np.asarray(starts), np.asarray(durations)


@pytest.mark.parametrize("sd, tau_s", [(0.1, 0.4), (0.06, 0.3), (0.05, 0.1)])
def test_fit_ou_recovers_simdists_jitter(sd: float, tau_s: float) -> None:
    """Over 4 seeds of 30 s: the median fitted sd within 20 %, the correlation time within a
    factor 1.6 (a 30 s series holds only ~100 correlation times)."""
    fits = [fit_ou(*_series(sd, tau_s, seed)) for seed in range(4)]
    assert np.median([f["jitter_sd"] for f in fits]) == pytest.approx(sd, rel=0.2)
    tau_ms = float(np.median([f["jitter_ms"] for f in fits]))
    assert 1e3 * tau_s / 1.6 <= tau_ms <= 1e3 * tau_s * 1.6
    assert all(f["acf"]["10"] > 0.5 for f in fits)


def test_white_noise_or_too_short_a_probe_gives_no_jitter() -> None:
    white = fit_ou(*_series(1e-9, 0.3, 0, seconds=10.0, white=0.1))
    assert white["jitter_sd"] == 0.0 and white["unit_log_sd"] == pytest.approx(0.1, rel=0.1)
    short = fit_ou(*_series(0.1, 0.3, 0, seconds=0.1))
    assert short["bins"] < 20 and short["jitter_sd"] == 0.0


def test_measure_jitter_times_the_unit() -> None:
    cfg = JitterConfig(duration_s=0.3, matrix=32, reps=2, warmup=2)
    out = measure_jitter(cfg)
    assert out["units"] > 20 and out["unit_ms"] > 0 and np.isfinite(out["unit_log_sd"])
    assert out["jitter_sd"] >= 0 and out["config"]["duration_s"] == 0.3


@pytest.mark.parametrize("bad", [{"duration_s": 0}, {"bin_ms": 0}, {"max_lag_ms": 1.0},
                                 {"reps": 0}, {"warmup": -1}])
def test_jitter_config_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        JitterConfig(**bad)
