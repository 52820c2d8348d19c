"""The host's speed jitter, measured directly: simdist's `host.jitter_sd` / `jitter_ms`.

A shared host's speed wanders: the same work takes longer for a while, then less, for every
process at once (simdist.host.HostJitter models it as exp(x(t)), x an Ornstein-Uhlenbeck process
of stationary standard deviation `jitter_sd` and correlation time `jitter_ms`). `measure_jitter`
times one fixed unit of work (a few small matmuls, ~2-4 ms, one thread) back to back for
`duration_s`, averages the log durations in `bin_ms` bins and fits the OU autocovariance
`sd^2 exp(-lag / tau)` to the bins' autocovariance at lags 1.. (lag 0 is left out: it also holds
the unit's own white timing noise, which an OU process of the host's speed does not have).

On this 2-vCPU host, idle: a unit's log time has a standard deviation of ~0.07, its 10 ms bins
are correlated +0.7 at one lag and the correlation decays over ~0.3-0.5 s, i.e. jitter_sd
~0.06, jitter_ms ~300-500. (Fitting the jitter to how two replays of one trace disagree,
simdist.calibrate.fit_jitter, gave 0.30-0.40: the replays also diverge through their
scheduling, which is not the host's speed.)
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

MIN_BINS = 20  # fewer timed bins: no estimate
MIN_ACF = 0.3  # lags whose autocorrelation fell below this are not fitted


@dataclass(frozen=True)
class JitterConfig:
    duration_s: float = 20.0  # how long the unit is timed back to back
    bin_ms: float = 10.0  # log durations averaged per bin
    max_lag_ms: float = 2000.0  # largest lag fitted
    matrix: int = 256  # the unit: `reps` products of two matrix x matrix float32 matrices
    reps: int = 12
    warmup: int = 50  # units run before timing
    threads: int = 1  # torch intra-op threads while timing

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.bin_ms <= 0 or self.max_lag_ms < self.bin_ms:
            raise ValueError("jitter probe: duration_s and bin_ms must be > 0 and "
                             "max_lag_ms >= bin_ms")
        if min(self.matrix, self.reps, self.threads) < 1 or self.warmup < 0:
            raise ValueError("jitter probe: matrix, reps and threads must be >= 1, warmup >= 0")


def probe_series(cfg: JitterConfig) -> tuple[np.ndarray, np.ndarray]:
    """(start s, duration s) of each timed unit, back to back for cfg.duration_s."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        a = torch.randn(cfg.matrix, cfg.matrix)
        b = torch.randn(cfg.matrix, cfg.matrix)

        def unit() -> None:
            for _ in range(cfg.reps):
                torch.mm(a, b)

        for _ in range(cfg.warmup):
            unit()
        starts, durations = [], []
        t0 = time.perf_counter()
        now = t0
        while now - t0 < cfg.duration_s:
            unit()
            end = time.perf_counter()
            starts.append(now - t0)
            durations.append(end - now)
            now = end
    finally:
        torch.set_num_threads(threads)
    return np.asarray(starts), np.asarray(durations)


def fit_ou(starts: np.ndarray, durations: np.ndarray, bin_s: float = 0.01,
           max_lag_s: float = 2.0) -> dict:
    """jitter_sd / jitter_ms of an OU process fitted to the binned log durations'
    autocovariance at lags 1..max_lag (log-linear least squares over the lags whose
    autocorrelation stays >= MIN_ACF, up to the first one below it). No correlated noise
    (fewer than two such lags, or too few bins): jitter_sd 0."""
    log_d = np.log(np.asarray(durations, dtype=float))
    bins = np.floor(np.asarray(starts, dtype=float) / bin_s).astype(int)
    n = int(bins.max()) + 1 if len(bins) else 0
    sums, counts = np.zeros(n), np.zeros(n)
    np.add.at(sums, bins, log_d)
    np.add.at(counts, bins, 1)
    series = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    out = {"units": len(log_d), "unit_ms": 1e3 * float(np.median(durations)) if len(log_d)
           else float("nan"), "unit_log_sd": float(np.std(log_d)) if len(log_d) else 0.0,
           "bins": int(np.sum(counts > 0)), "bin_ms": 1e3 * bin_s, "jitter_sd": 0.0,
           "jitter_ms": float("nan"), "acf": {}}
    if out["bins"] < MIN_BINS:
        return out
    x = series - np.nanmean(series)
    var0 = float(np.nanmean(x * x))
    lags, acov = [], []
    for lag in range(1, min(int(round(max_lag_s / bin_s)), n - 1) + 1):
        prod = x[lag:] * x[:-lag]
        prod = prod[np.isfinite(prod)]
        if len(prod) < MIN_BINS:
            break
        c = float(np.mean(prod))
        if var0 <= 0 or c / var0 < MIN_ACF:
            break
        lags.append(lag * bin_s)
        acov.append(c)
    out["acf"] = {f"{1e3 * lag:g}": c / var0 for lag, c in zip(lags, acov, strict=True)
                  if round(lag / bin_s) in (1, 3, 10, 30, 100)}
    if len(lags) < 2:
        return out
    slope, intercept = np.polyfit(np.asarray(lags), np.log(acov), 1)
    if slope >= 0:  # no decay within max_lag: correlated beyond it; keep the level only
        return {**out, "jitter_sd": math.sqrt(max(acov)), "jitter_ms": 1e3 * lags[-1]}
    return {**out, "jitter_sd": math.sqrt(math.exp(intercept)), "jitter_ms": -1e3 / slope}


def measure_jitter(cfg: JitterConfig | None = None) -> dict:
    """Time the unit for cfg.duration_s and fit the host's jitter (`fit_ou`); the result also
    carries the probe's config."""
    cfg = cfg or JitterConfig()
    starts, durations = probe_series(cfg)
    return {**fit_ou(starts, durations, cfg.bin_ms * 1e-3, cfg.max_lag_ms * 1e-3),
            "config": asdict(cfg)}
