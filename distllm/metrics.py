"""Latency metrics shared by the engine, simdist and the load generator (pure Python).

TTFT = first token time - arrival; TPOT = (last token time - first token time) / (output_len - 1)
(0 for single-token outputs); SLO attainment = share of requests meeting the SLO(s), failed
requests counting as misses; goodput = requests meeting both SLOs per second. Summary keys follow
vLLM's benchmark naming (`mean_ttft_ms`, `p99_tpot_ms`, `request_throughput`, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """One finished (or failed) request as the client saw it. Times in seconds."""

    prompt_len: int
    output_len: int
    start_time: float  # arrival / send time
    end_time: float
    token_timestamps: list[float] = field(default_factory=list)  # one per output token
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.token_timestamps) > 0

    @property
    def ttft(self) -> float:
        return self.token_timestamps[0] - self.start_time if self.ok else math.inf

    @property
    def tpot(self) -> float:
        if not self.ok:
            return math.inf
        n = len(self.token_timestamps)
        if n <= 1:
            return 0.0
        return (self.token_timestamps[-1] - self.token_timestamps[0]) / (n - 1)

    @property
    def latency(self) -> float:
        return self.end_time - self.start_time if self.ok else math.inf

    @property
    def itls(self) -> list[float]:
        ts = self.token_timestamps
        return [b - a for a, b in zip(ts, ts[1:], strict=False)]

    def to_json(self) -> dict:
        ok = self.ok
        return {
            "prompt_len": self.prompt_len,
            "output_len": self.output_len,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "token_timestamps": self.token_timestamps,
            "latency": self.latency if ok else None,
            "ttft": self.ttft if ok else None,
            "tpot": self.tpot if ok else None,
            "error": self.error,
        }


def json_safe(x: object) -> object:
    """`x` with NaN/inf floats turned into None, recursively through dicts and lists: `.exp` files
    stay strict JSON (strict readers reject NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method); nan for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def meets_slo(rec: RequestRecord, ttft_slo_ms: float | None, tpot_slo_ms: float | None) -> bool:
    if not rec.ok:
        return False
    if ttft_slo_ms is not None and rec.ttft * 1e3 > ttft_slo_ms:
        return False
    if tpot_slo_ms is not None and rec.tpot * 1e3 > tpot_slo_ms:
        return False
    return True


def slo_attainment(
    records: Iterable[RequestRecord], ttft_slo_ms: float | None, tpot_slo_ms: float | None
) -> float:
    """Share of requests meeting every given SLO (None = not checked); nan for no requests."""
    records = list(records)
    if not records:
        return math.nan
    return sum(meets_slo(r, ttft_slo_ms, tpot_slo_ms) for r in records) / len(records)


def _stats(prefix: str, values_s: list[float]) -> dict[str, float]:
    out = {f"mean_{prefix}_ms": (sum(values_s) / len(values_s) * 1e3) if values_s else math.nan}
    out[f"median_{prefix}_ms"] = percentile(values_s, 50) * 1e3
    out[f"std_{prefix}_ms"] = _std(values_s) * 1e3
    for p in PERCENTILES:
        out[f"p{p}_{prefix}_ms"] = percentile(values_s, p) * 1e3
    return out


def _std(xs: list[float]) -> float:
    if not xs:
        return math.nan
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def summarize(
    records: Sequence[RequestRecord],
    duration_s: float,
    ttft_slo_ms: float | None = None,
    tpot_slo_ms: float | None = None,
) -> dict[str, float]:
    """Throughput, latency percentiles, SLO attainment (both SLOs and each alone) and goodput."""
    ok = [r for r in records if r.ok]
    out: dict[str, float] = {
        "num_requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "duration_s": duration_s,
        "total_input_tokens": sum(r.prompt_len for r in ok),
        "total_output_tokens": sum(len(r.token_timestamps) for r in ok),
    }
    d = duration_s if duration_s > 0 else math.nan
    out["request_throughput"] = len(ok) / d
    out["output_throughput"] = out["total_output_tokens"] / d
    out["total_token_throughput"] = (out["total_input_tokens"] + out["total_output_tokens"]) / d
    out.update(_stats("ttft", [r.ttft for r in ok]))
    out.update(_stats("tpot", [r.tpot for r in ok if len(r.token_timestamps) > 1]))
    out.update(_stats("itl", [x for r in ok for x in r.itls]))
    out.update(_stats("e2el", [r.latency for r in ok]))
    if ttft_slo_ms is not None or tpot_slo_ms is not None:
        out["ttft_slo_ms"] = ttft_slo_ms
        out["tpot_slo_ms"] = tpot_slo_ms
        good = sum(meets_slo(r, ttft_slo_ms, tpot_slo_ms) for r in records)
        out["attainment"] = good / len(records) if records else math.nan
        out["attainment_ttft"] = slo_attainment(records, ttft_slo_ms, None)
        out["attainment_tpot"] = slo_attainment(records, None, tpot_slo_ms)
        out["request_goodput"] = good / d
    return out


def max_rate_meeting(points: Sequence[tuple[float, float]], target: float) -> float:
    """DistServe goodput: the highest rate whose attainment >= target, linearly interpolated
    between the last passing and the first failing rate. `points` = [(rate, attainment)]."""
    pts = sorted(points)
    best = 0.0
    for (r0, a0), (r1, a1) in zip([(0.0, 1.0)] + pts, pts, strict=False):
        if a1 >= target:
            best = r1
            continue
        if a0 >= target and a0 != a1:
            best = r0 + (r1 - r0) * (a0 - target) / (a0 - a1)
        break
    return best
