"""End-to-end rounds of the real load generator against the in-test streaming server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataset.common import DatasetRequest, write_dataset
from evaluation.benchmark_serving import main
from evaluation.exp_format import load_exp
from tests.evaluation.conftest import ServerThread

TTFT_S, TPOT_S = 0.02, 0.005


def _dataset(tmp_path: Path, n: int = 12) -> Path:
    reqs = [DatasetRequest(f"prompt {i}", 10 + i, 3 + i % 6, id=str(i)) for i in range(n)]
    return write_dataset(tmp_path / "d.jsonl", reqs, {"source": "unit"})


def _argv(srv: ServerThread, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--base-url",
        srv.base_url,
        "--dataset",
        str(data),
        "--output-dir",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_distllm_rounds(tmp_path: Path, mock_server: ServerThread) -> None:
    data = _dataset(tmp_path)
    argv = _argv(
        mock_server,
        data,
        tmp_path / "out",
        "--num-prompts-req-rates",
        "[(12, 100), (8, 'inf')]",
        "--label",
        "disagg",
        "--ttft-slo-ms",
        "5000",
        "--tpot-slo-ms",
        "5000",
    )
    assert main(argv) == 0
    assert len(mock_server.server.received) == 20
    known = {(10 + i, 3 + i % 6) for i in range(12)}
    for name, n in (("distllm-12-100.exp", 12), ("distllm-8-inf.exp", 8)):
        run = load_exp(tmp_path / "out" / name)
        assert run.meta["num_prompts"] == n and run.meta["backend"] == "distllm"
        assert run.meta["dataset_meta"]["source"] == "unit" and run.meta["label"] == "disagg"
        assert len(run.records) == n and all(r.ok for r in run.records)
        assert {(r.prompt_len, r.output_len) for r in run.records} <= known
        for rec, life in zip(run.records, run.lifetimes, strict=True):
            assert len(rec.token_timestamps) == rec.output_len  # ignore_eos: exact lengths
            # lower bounds only: the server sleeps TTFT, then TPOT between tokens
            server_s = TTFT_S + (rec.output_len - 1) * TPOT_S
            assert rec.ttft >= TTFT_S * 0.99 and rec.latency >= server_s * 0.99
            assert life.get("prefill_end") - life.get("arrival") == pytest.approx(TTFT_S)
        assert run.summary["attainment"] == 1.0 and run.summary["failed"] == 0


@pytest.mark.parametrize("backend", ["openai", "openai-chat", "deepspeed"])
def test_other_backends(tmp_path: Path, mock_server: ServerThread, backend: str) -> None:
    data = _dataset(tmp_path, 6)
    argv = _argv(
        mock_server,
        data,
        tmp_path / "out",
        "--backend",
        backend,
        "--model",
        "m",
        "--num-prompts",
        "6",
        "--request-rate",
        "inf",
    )
    assert main(argv) == 0
    raw = json.loads((tmp_path / "out" / f"{backend}-6-inf.exp").read_text())
    assert raw["meta"]["streaming"] == (backend != "deepspeed")
    for req in raw["requests"]:
        assert req["error"] is None and req["num_output_tokens"] == req["output_len"]
        n_stamps = 1 if backend == "deepspeed" else req["output_len"]
        assert len(req["token_timestamps"]) == n_stamps
        assert req["ttft"] >= TTFT_S * 0.99
    if backend == "deepspeed":
        assert raw["summary"]["mean_tpot_ms"] is None  # not measurable without streaming
        assert raw["requests"][0]["ttft"] == pytest.approx(raw["requests"][0]["latency"])


@pytest.mark.parametrize(
    "mock_server", [{"ttft_s": 0.0, "tpot_s": 0.0, "fail_every": 3}], indirect=True
)
def test_failures_count_as_misses(tmp_path: Path, mock_server: ServerThread) -> None:
    argv = _argv(
        mock_server,
        _dataset(tmp_path),
        tmp_path / "out",
        "--num-prompts",
        "9",
        "--request-rate",
        "200",
        "--ttft-slo-ms",
        "5000",
    )
    assert main(argv) == 0
    run = load_exp(tmp_path / "out" / "distllm-9-200.exp")
    assert run.summary["failed"] == 3 and run.summary["completed"] == 6
    assert run.summary["attainment"] == pytest.approx(6 / 9)
    assert all("HTTP 500" in r.error for r in run.records if not r.ok)


def test_max_concurrency_serialises(tmp_path: Path, mock_server: ServerThread) -> None:
    argv = _argv(
        mock_server,
        _dataset(tmp_path),
        tmp_path / "out",
        "--num-prompts",
        "4",
        "--request-rate",
        "inf",
        "--max-concurrency",
        "1",
    )
    assert main(argv) == 0
    got = mock_server.server.received
    assert len(got) == 4 and all(b - a >= TTFT_S for a, b in zip(got, got[1:], strict=False))


def test_sweep_against_server(tmp_path: Path, mock_server: ServerThread) -> None:
    argv = _argv(
        mock_server,
        _dataset(tmp_path),
        tmp_path / "out",
        "--sweep",
        "--num-prompts",
        "4",
        "--sweep-start-rate",
        "50",
        "--sweep-max-rate",
        "200",
        "--ttft-slo-ms",
        "5000",
        "--num-gpus",
        "2",
    )
    assert main(argv) == 0
    out = json.loads((tmp_path / "out" / "distllm-sweep.json").read_text())
    assert [p[0] for p in out["points"]] == [50, 100, 200]
    assert out["goodput_rps"] == 200 and out["per_gpu_goodput_rps"] == 100
    assert (tmp_path / "out" / "distllm-sweep-4-200.exp").is_file()


def test_bench_loadgen_measure_row(mock_server: ServerThread) -> None:
    import asyncio

    from evaluation.bench_loadgen import format_table, measure

    row = asyncio.run(measure(mock_server.base_url, 500.0, 20, 2, "uniform", 0, 0.002))
    assert row["completed"] == 20 and row["num_requests"] == 20
    assert row["p99_lateness_ms"] >= row["p50_lateness_ms"] >= 0
    assert "p99 late ms" in format_table([{**row, "loadavg_1m": 0.0}])


def test_trace_arrivals_replay_in_order(tmp_path: Path, mock_server: ServerThread) -> None:
    reqs = [DatasetRequest(f"p{i}", 5, 2, arrival_s=10 + 0.01 * i) for i in range(5)]
    data = write_dataset(tmp_path / "t.jsonl", reqs, {"source": "trace"})
    assert (
        main(_argv(mock_server, data, tmp_path / "out", "--arrival", "trace", "--num-prompts", "5"))
        == 0
    )
    raw = json.loads((tmp_path / "out" / "distllm-5-inf.exp").read_text())
    assert [r["scheduled_time"] for r in raw["requests"]] == pytest.approx(
        [0.01 * i for i in range(5)]
    )


def test_unreachable_server_fails_the_run(tmp_path: Path) -> None:
    data = _dataset(tmp_path, 3)
    argv = [
        "--base-url",
        "http://127.0.0.1:1",
        "--dataset",
        str(data),
        "--num-prompts",
        "3",
        "--output-dir",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert main(argv) == 1
    raw = json.loads((tmp_path / "out" / "distllm-3-inf.exp").read_text())
    assert all(r["error"] for r in raw["requests"]) and raw["summary"]["completed"] == 0
    assert main([*argv, "--sweep", "--ttft-slo-ms", "100", "--sweep-start-rate", "1000"]) == 1


@pytest.mark.parametrize(
    "mock_server", [{"ttft_s": 0.02, "tpot_s": 0.0, "capacity": 1}], indirect=True
)
def test_capacity_queues_requests(tmp_path: Path, mock_server: ServerThread) -> None:
    argv = _argv(
        mock_server,
        _dataset(tmp_path, 4),
        tmp_path / "out",
        "--num-prompts",
        "4",
        "--request-rate",
        "inf",
        "--ttft-slo-ms",
        "5000",
    )
    assert main(argv) == 0
    run = load_exp(tmp_path / "out" / "distllm-4-inf.exp")
    ttfts = sorted(r.ttft for r in run.records)
    assert all(t >= (k + 1) * 0.02 * 0.99 for k, t in enumerate(ttfts))  # served one at a time
