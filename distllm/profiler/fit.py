"""Fits the simulator's latency model to the measured steps (least squares on relative error,
via `simdist.profile_fit`, imported lazily) and reports how far the fit is from each measurement.

    prefill_ms = a + b*sum(l) + c*sum(l^2)
    decode_ms  = a + b*sum(ctx) + c*batch     small (batch < threshold) / large batch regimes
The decode threshold is chosen among the measured batch sizes to minimise the worst residual.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# prompt lengths of the batch, measured ms
PrefillSample = tuple[list[int], float]
# batch, sum of context lengths, measured ms
DecodeSample = tuple[int, int, float]


@dataclass(frozen=True)
class Residuals:
    """Relative errors (fit - measured) / measured of one phase over its grid."""

    max_rel: float
    rms_rel: float
    per_point: tuple[float, ...]

    @classmethod
    def of(cls, predicted: Sequence[float], measured: Sequence[float]) -> Residuals:
        rel = tuple((p - m) / m for p, m in zip(predicted, measured, strict=True))
        rms = (sum(r * r for r in rel) / len(rel)) ** 0.5
        return cls(max(abs(r) for r in rel), rms, rel)

    def to_json(self) -> dict:
        return {"max_rel": self.max_rel, "rms_rel": self.rms_rel}


def predict_prefill(coef: Sequence[float], lens: Sequence[int]) -> float:
    a, b, c = coef
    return a + b * sum(lens) + c * sum(x * x for x in lens)


def predict_decode(entry: dict, batch: int, sum_ctx: int) -> float:
    key = "decode_small" if batch < entry["decode_threshold"] else "decode_large"
    a, b, c = entry[key]
    return a + b * sum_ctx + c * batch


@dataclass(frozen=True)
class FitResult:
    entry: dict  # one `tp` entry of a profile (ms coefficients)
    prefill: Residuals
    decode: Residuals

    @property
    def max_rel(self) -> float:
        return max(self.prefill.max_rel, self.decode.max_rel)


def _thresholds(decode: Sequence[DecodeSample]) -> list[int]:
    """Candidate regime splits: no split, and every measured batch size leaving >= 3 samples
    on each side."""
    sizes = sorted({b for b, _, _ in decode})
    cands = [max(sizes) + 1]
    for t in sizes[1:]:
        if sum(b < t for b, _, _ in decode) >= 3 and sum(b >= t for b, _, _ in decode) >= 3:
            cands.append(t)
    return cands


def fit_profile_entry(prefill: Sequence[PrefillSample],
                      decode: Sequence[DecodeSample]) -> FitResult:
    """Relative-error fit of both phases, with the decode threshold of the smallest worst
    residual (ties: fewer regimes)."""
    from simdist.profile_fit import fit_decode, fit_prefill

    pcoef = fit_prefill(prefill, relative=True)
    pres = Residuals.of([predict_prefill(pcoef, ls) for ls, _ in prefill],
                        [ms for _, ms in prefill])
    best: tuple[float, dict, Residuals] | None = None
    for t in _thresholds(decode):
        entry = fit_decode(decode, threshold=t, relative=True)
        res = Residuals.of([predict_decode(entry, b, c) for b, c, _ in decode],
                           [ms for *_, ms in decode])
        if best is None or res.max_rel < best[0] - 1e-9:
            best = (res.max_rel, entry, res)
    assert best is not None
    return FitResult({"prefill": pcoef, **best[1]}, pres, best[2])
