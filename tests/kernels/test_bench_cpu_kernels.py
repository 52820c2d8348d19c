"""evaluation/bench_cpu_kernels.py: importable, config validation, result schema (no timings)."""

from __future__ import annotations

import json

import pytest

from evaluation import bench_cpu_kernels as bench


def test_config_validation_and_kv_bytes() -> None:
    cfg = bench.DecodeBenchConfig(num_seqs=2, context_len=10, num_kv_heads=1, head_dim=64)
    assert cfg.kv_bytes == 2 * 10 * 2 * 1 * 64 * 4
    with pytest.raises(ValueError, match="block_size"):
        bench.DecodeBenchConfig(block_size=12)
    with pytest.raises(ValueError, match="dtype"):
        bench.DecodeBenchConfig(dtype="int8")


def test_measure_returns_consistent_figures() -> None:
    result = bench.measure_decode_attention_bandwidth(
        num_seqs=2,
        context_len=70,
        num_kv_heads=1,
        group=4,
        head_dim=64,
        iters=2,
        copy_mb=64,
        num_threads=1,
        dtype="bfloat16",
    )
    assert result["decode_gbps"] > 0 and result["copy_gbps"] > 0
    assert result["fraction_of_copy"] == pytest.approx(result["decode_gbps"] / result["copy_gbps"])
    assert result["meets_goal"] == (result["fraction_of_copy"] >= bench.GOAL_FRACTION)
    assert result["max_abs_err_vs_reference"] < 0.05
    assert result["config"]["dtype"] == "bfloat16"
    json.dumps(result)  # JSON-serialisable


def test_main_writes_json(tmp_path) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "--dtypes",
        "float32",
        "--threads",
        "1",
        "--num-seqs",
        "2",
        "--context-len",
        "33",
        "--iters",
        "1",
        "--copy-mb",
        "64",
        "--no-reference",
        "--output",
        str(out),
    ]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and "reference_ms" not in rows[0]
