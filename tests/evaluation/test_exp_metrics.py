"""`.exp` summaries on hand-made records with known answers, and the file round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from distllm.metrics import RequestRecord
from evaluation.backends import BackendResult
from evaluation.exp_format import build_exp, build_summary, format_summary, load_exp, write_exp
from evaluation.load_runner import RoundResult

EVENTS = [
    {"event_type": "arrival", "timestamp": 10.0},
    {"event_type": "prefill_begin", "timestamp": 10.02},
    {"event_type": "decode_end", "timestamp": 10.3},
]


def _round() -> RoundResult:
    recs = [
        RequestRecord(8, 3, 0.0, 0.3, [0.1, 0.2, 0.3]),  # ttft 100 ms, tpot 100 ms
        RequestRecord(4, 2, 1.0, 1.55, [1.5, 1.55]),  # ttft 500 ms, tpot 50 ms
        RequestRecord(5, 9, 2.5, 2.6, [], error="HTTP 500: boom"),  # failed
        RequestRecord(6, 1, 2.0, 2.05, [2.05]),  # ttft 50 ms, single token
    ]
    results = [BackendResult(lifecycle_events=EVENTS if i == 0 else []) for i in range(4)]
    return RoundResult(recs, results, [0.0, 1.0, 2.0, 2.5], [0.001, 1.002, 2.0, 2.504], 4.0, 1.7e9)


def test_summary_known_answers() -> None:
    s = build_summary(_round(), ttft_slo_ms=200, tpot_slo_ms=80)
    assert (s["completed"], s["failed"]) == (3, 1)
    assert s["request_throughput"] == pytest.approx(0.75)
    assert s["total_output_tokens"] == 6 and s["total_input_tokens"] == 18
    assert s["mean_ttft_ms"] == pytest.approx((100 + 500 + 50) / 3)
    assert s["median_ttft_ms"] == pytest.approx(100)
    assert s["mean_tpot_ms"] == pytest.approx(75)  # single-token requests have no TPOT
    assert s["mean_e2el_ms"] == pytest.approx((300 + 550 + 50) / 3)
    assert s["attainment"] == pytest.approx(0.25)  # only the single-token request meets both
    assert s["attainment_ttft"] == pytest.approx(0.5)
    assert s["attainment_tpot"] == pytest.approx(0.5)
    assert s["request_goodput"] == pytest.approx(0.25)
    assert s["max_dispatch_lateness_ms"] == pytest.approx(4.0)
    text = format_summary(s)
    assert "Attainment, both SLOs (%)" in text and "25.0" in text


def test_non_streaming_summary_hides_tpot() -> None:
    rnd = _round()
    rnd.results[0].num_output_tokens = 30
    s = build_summary(rnd, None, None, is_streaming=False)
    assert s["total_output_tokens"] == 30 + 2 + 1
    assert math.isnan(s["mean_tpot_ms"]) and math.isnan(s["p99_itl_ms"])
    assert "attainment" not in s


def test_exp_round_trip_is_strict_json(tmp_path: Path) -> None:
    rnd = _round()
    summary = build_summary(rnd, 200, 80)
    meta = {"backend": "distllm", "rate": 2.0, "num_prompts": 4, "seed": 0}
    path = write_exp(tmp_path / "x.exp", build_exp(meta, rnd, summary))
    raw = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert raw["meta"]["rate"] == 2.0 and raw["meta"]["start_time_unix"] == 1.7e9
    first = raw["requests"][0]
    assert first["ttft"] == pytest.approx(0.1) and first["tpot"] == pytest.approx(0.1)
    assert first["lifecycle_events"] == EVENTS and first["scheduled_time"] == 0.0
    assert raw["requests"][2]["ttft"] is None and raw["requests"][2]["error"].startswith("HTTP")
    run = load_exp(path)
    assert run.rate == 2.0 and run.records == rnd.records
    assert run.lifetimes[0].get("prefill_begin") == 10.02
    assert run.summary["attainment"] == pytest.approx(0.25)


def test_load_exp_synthesises_tokens_from_ttft_tpot(tmp_path: Path) -> None:
    path = tmp_path / "old.exp"
    req = {
        "prompt_len": 3,
        "output_len": 5,
        "start_time": 1.0,
        "end_time": 2.0,
        "ttft": 0.2,
        "tpot": 0.1,
        "latency": 1.0,
        "lifecycle_events": [],
    }
    path.write_text(json.dumps({"meta": {"rate": 1}, "requests": [req], "summary": {}}))
    rec = load_exp(path).records[0]
    assert rec.ttft == pytest.approx(0.2) and rec.tpot == pytest.approx(0.1)
    assert len(rec.token_timestamps) == 5


def test_exp_document_for_simulated_runs(tmp_path: Path) -> None:
    from distllm.request import Lifetime
    from evaluation.exp_format import exp_document

    recs = _round().records
    lives = [Lifetime.from_json(EVENTS)] + [Lifetime() for _ in recs[1:]]
    doc = exp_document({"backend": "simdist", "rate": 3.0}, recs, lives, {"x": math.nan})
    run = load_exp(write_exp(tmp_path / "sim.exp", doc))
    assert run.records == recs and run.summary == {"x": None}
    assert run.lifetimes[0].get("decode_end") == 10.3 and run.rate == 3.0
