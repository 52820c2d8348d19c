"""analyze.py on hand-made `.exp` files: attainment table, goodput, breakdown, SLO scale, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distllm.metrics import RequestRecord
from distllm.request import Lifetime
from evaluation.analyze import latency_breakdown, load_runs, main, slo_scale_curve
from evaluation.backends import BackendResult
from evaluation.exp_format import build_exp, build_summary, write_exp
from evaluation.load_runner import RoundResult

DISAGG = [
    ("arrival", 100.0),
    ("prefill_begin", 100.01),
    ("prefill_end", 100.05),
    ("migration_begin", 100.06),
    ("migration_end", 100.08),
    ("decode_begin", 100.1),
    ("decode_end", 100.5),
]


def _events(pairs: list[tuple[str, float]]) -> list[dict]:
    return [{"event_type": e, "timestamp": t} for e, t in pairs]


def test_breakdown_disaggregated_and_colocated() -> None:
    b = latency_breakdown(Lifetime.from_json(_events(DISAGG)))
    want = {
        "prefill_queueing": 0.01,
        "prefill": 0.04,
        "transfer": 0.02,
        "decode_queueing": 0.02,
        "decode": 0.4,
    }
    assert b == pytest.approx(want)
    colo = [p for p in DISAGG if not p[0].startswith("migration")]
    assert latency_breakdown(Lifetime.from_json(_events(colo)))["decode_queueing"] == pytest.approx(
        0.05
    )
    assert latency_breakdown(Lifetime.from_json(_events(DISAGG[:3]))) is None


def _write_run(path: Path, rate: float, ttfts: list[float]) -> None:
    """Requests with 3 tokens 50 ms apart (TPOT 50 ms) and the given TTFTs."""
    recs = [
        RequestRecord(8, 3, float(i), float(i) + t + 0.1, [i + t, i + t + 0.05, i + t + 0.1])
        for i, t in enumerate(ttfts)
    ]
    results = [BackendResult(lifecycle_events=_events(DISAGG)) for _ in recs]
    rnd = RoundResult(
        recs,
        results,
        [r.start_time for r in recs],
        [r.start_time for r in recs],
        float(len(recs)),
        0.0,
    )
    meta = {
        "backend": "distllm",
        "dataset": "/x/sharegpt.jsonl",
        "rate": rate,
        "ttft_slo_ms": 200.0,
        "tpot_slo_ms": 100.0,
        "attainment": 0.9,
    }
    write_exp(path, build_exp(meta, rnd, build_summary(rnd, 200.0, 100.0)))


def test_main_tables_goodput_and_plots(tmp_path: Path) -> None:
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    _write_run(exp_dir / "a.exp", 1.0, [0.1] * 10)  # 100 %
    _write_run(exp_dir / "b.exp", 2.0, [0.1] * 9 + [0.5])  # 90 %
    _write_run(exp_dir / "c.exp", 4.0, [0.1] * 5 + [0.5] * 5)  # 50 %
    out = tmp_path / "an"
    assert main([str(exp_dir), "--output-dir", str(out)]) == 0
    res = json.loads((out / "analysis.json").read_text())
    assert [r["rate"] for r in res["rows"]] == [1.0, 2.0, 4.0]
    assert [r["attainment"] for r in res["rows"]] == pytest.approx([1.0, 0.9, 0.5])
    assert [r["attainment_tpot"] for r in res["rows"]] == [1.0, 1.0, 1.0]
    assert res["goodput"]["distllm-sharegpt.jsonl"]["attainment"] == pytest.approx(2.0)
    assert res["goodput"]["distllm-sharegpt.jsonl"]["attainment_tpot"] == pytest.approx(4.0)
    assert res["breakdown"][0]["transfer"] == pytest.approx(0.02)
    for name in (
        "attainment_vs_rate.png",
        "attainment_vs_slo_scale.png",
        "latency_cdf.png",
        "latency_breakdown.png",
    ):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| series | rate |" in (out / "attainment.md").read_text()
    assert (out / "breakdown.csv").read_text().startswith("series,rate,prefill_queueing")


def test_slo_scale_curve(tmp_path: Path) -> None:
    _write_run(tmp_path / "c.exp", 4.0, [0.1] * 5 + [0.5] * 5)
    run = load_runs([tmp_path / "c.exp"])[0]
    curve = dict(slo_scale_curve(run, 200.0, 100.0, scales=(0.4, 1.0, 3.0)))
    assert curve == {0.4: 0.0, 1.0: 0.5, 3.0: 1.0}  # 80 ms TTFT SLO: nothing passes
