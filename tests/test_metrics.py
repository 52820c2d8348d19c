"""Known-answer tests for distllm.metrics and distllm.request (shared by engine, simdist, bench)."""

from __future__ import annotations

import math

import pytest

from distllm.metrics import RequestRecord, max_rate_meeting, percentile, slo_attainment, summarize
from distllm.request import LifecycleEvent, Lifetime


def _rec(start: float, tokens: list[float], error: str | None = None) -> RequestRecord:
    return RequestRecord(
        prompt_len=10,
        output_len=len(tokens),
        start_time=start,
        end_time=tokens[-1] if tokens else start,
        token_timestamps=tokens,
        error=error,
    )


def test_ttft_tpot_latency() -> None:
    r = _rec(1.0, [1.5, 1.6, 1.8, 2.1])
    assert r.ttft == pytest.approx(0.5)
    assert r.tpot == pytest.approx((2.1 - 1.5) / 3)
    assert r.latency == pytest.approx(1.1)
    assert r.itls == pytest.approx([0.1, 0.2, 0.3])


def test_single_token_has_zero_tpot_and_failed_is_inf() -> None:
    assert _rec(0.0, [0.2]).tpot == 0.0
    bad = _rec(0.0, [], error="boom")
    assert not bad.ok and bad.ttft == math.inf and bad.to_json()["ttft"] is None


def test_percentile_matches_linear_interpolation() -> None:
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 50) == pytest.approx(2.5)
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    assert math.isnan(percentile([], 50))


def test_attainment_counts_failures_as_misses() -> None:
    recs = [
        _rec(0.0, [0.1, 0.2, 0.3]),  # ttft 100 ms, tpot 100 ms
        _rec(0.0, [0.3, 0.35]),  # ttft 300 ms, tpot 50 ms
        _rec(0.0, [0.05, 0.45]),  # ttft 50 ms, tpot 400 ms
        _rec(0.0, [], error="timeout"),
    ]
    assert slo_attainment(recs, 200, 200) == pytest.approx(0.25)
    assert slo_attainment(recs, 200, None) == pytest.approx(0.5)
    assert slo_attainment(recs, None, 200) == pytest.approx(0.5)
    s = summarize(recs, duration_s=2.0, ttft_slo_ms=200, tpot_slo_ms=200)
    assert s["completed"] == 3 and s["failed"] == 1
    assert s["request_throughput"] == pytest.approx(1.5)
    assert s["total_output_tokens"] == 7
    assert s["request_goodput"] == pytest.approx(0.5)
    assert s["median_ttft_ms"] == pytest.approx(100.0)
    assert s["attainment_ttft"] == pytest.approx(0.5)


def test_max_rate_meeting_interpolates_the_knee() -> None:
    pts = [(1.0, 1.0), (2.0, 0.95), (3.0, 0.85), (4.0, 0.5)]
    assert max_rate_meeting(pts, 0.9) == pytest.approx(2.5)
    assert max_rate_meeting(pts, 0.4) == pytest.approx(4.0)
    assert max_rate_meeting([(1.0, 0.5)], 0.9) == pytest.approx(0.0 + 1.0 * 0.1 / 0.5)


def test_lifetime_roundtrip_and_latest_event() -> None:
    lt = Lifetime()
    lt.record(LifecycleEvent.ARRIVAL, 1.0)
    lt.record("prefill_begin", 2.0)
    lt.record("prefill_begin", 3.0)  # re-prefilled after preemption
    assert lt.get("prefill_begin") == 3.0 and lt.first("prefill_begin") == 2.0
    assert lt.get(LifecycleEvent.DECODE_END) is None
    assert Lifetime.from_json(lt.to_json()) == lt
    with pytest.raises(ValueError):
        lt.record("not_an_event", 1.0)
