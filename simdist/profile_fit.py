"""Fits profile coefficients from measured iteration times (for `distllm profile`): least
squares of `prefill_ms = a + b*sum(l) + c*sum(l^2)` and, per batch regime,
`decode_ms = a + b*sum(ctx) + c*batch`. The result drops into a LatencyProfile's `tp` table.

`relative=True` minimises the relative error (each row divided by its measured time) with
non-negative coefficients, so short steps weigh as much as long ones and the fitted model
never extrapolates to negative times.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _lstsq(rows: list[list[float]], ys: list[float], what: str,
           relative: bool = False) -> list[float]:
    if len(rows) < 3:
        raise ValueError(f"fit {what}: need >= 3 samples, got {len(rows)}")
    a = np.asarray(rows, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if not relative:
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        return [float(x) for x in coef]
    if np.any(y <= 0):
        raise ValueError(f"fit {what}: relative fit needs positive times")
    from scipy.optimize import nnls

    scale = np.maximum(np.abs(a).max(axis=0), 1e-30)  # column scaling for conditioning
    coef, _ = nnls(a / y[:, None] / scale, np.ones_like(y))
    return [float(x) for x in coef / scale]


def fit_prefill(samples: Sequence[tuple[Sequence[int], float]],
                relative: bool = False) -> list[float]:
    """[a, b, c] from (prompt lengths of a batch, iteration ms) samples."""
    rows = [[1.0, float(sum(ls)), float(sum(x * x for x in ls))] for ls, _ in samples]
    return _lstsq(rows, [ms for _, ms in samples], "prefill", relative)


def fit_decode(samples: Sequence[tuple[int, int, float]], threshold: int = 95,
               relative: bool = False) -> dict[str, list[float] | int]:
    """{decode_small, decode_large, decode_threshold} from (batch, sum ctx, ms) samples; a
    regime with too few samples reuses the other's fit."""
    small = [s for s in samples if s[0] < threshold]
    large = [s for s in samples if s[0] >= threshold]

    def fit(ss: Sequence[tuple[int, int, float]], what: str) -> list[float]:
        return _lstsq([[1.0, float(c), float(b)] for b, c, _ in ss], [ms for *_, ms in ss],
                      what, relative)

    fits = {}
    for name, ss in (("decode_small", small), ("decode_large", large)):
        if len(ss) >= 3:
            fits[name] = fit(ss, name)
    if not fits:
        raise ValueError("fit decode: need >= 3 samples in at least one batch regime")
    fits.setdefault("decode_small", fits.get("decode_large"))
    fits.setdefault("decode_large", fits["decode_small"])
    return {**fits, "decode_threshold": threshold}


def profile_entry(prefill_samples: Sequence[tuple[Sequence[int], float]],
                  decode_samples: Sequence[tuple[int, int, float]],
                  threshold: int = 95, relative: bool = False) -> dict:
    """One `tp` entry of a profile: {prefill, decode_small, decode_large, decode_threshold}."""
    return {"prefill": fit_prefill(prefill_samples, relative),
            **fit_decode(decode_samples, threshold, relative)}
