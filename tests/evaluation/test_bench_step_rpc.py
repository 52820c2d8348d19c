"""evaluation/bench_step_rpc.py end to end on a tiny model: both RPCs measured, the table, JSON
and PNG written; bad flags are refused naming the flag."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation import bench_step_rpc


def test_bench_runs_end_to_end(ray_cluster: None, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from distllm.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "m", arch="llama3", seed=0, num_hidden_layers=2)
    out = tmp_path / "rpc.json"
    assert bench_step_rpc.main(["--model", str(model), "--batch-sizes", "1,2", "--steps", "3",
                                "--rounds", "2", "--no-progress", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["batch"] for r in report["rows"]] == [1, 2]
    for row in report["rows"]:
        for m in bench_step_rpc.METRICS:
            assert row[f"channel_{m}"] > 0 and row[f"ray_{m}"] > 0
            assert row[f"ratio_{m}"] == pytest.approx(row[f"ray_{m}"] / row[f"channel_{m}"])
    assert all(len(report["samples"][rpc]["1"]) == 2 for rpc in bench_step_rpc.RPCS)
    assert out.with_suffix(".png").stat().st_size > 0
    assert "driver CPU ms/step" in capsys.readouterr().out


@pytest.mark.parametrize("flags, named", [(["--batch-sizes", "1,x"], "--batch-sizes"),
                                          (["--rounds", "0"], "--rounds"),
                                          (["--batch-sizes", "0"], "--batch-sizes")])
def test_bad_flags_are_refused(flags: list[str], named: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_step_rpc.main(flags)
    assert named in capsys.readouterr().err
