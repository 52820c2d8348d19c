"""evaluation/bench_cpu_linear.py end to end with one timed call per figure: the report's schema,
both tables' rows, the switch restored (no timings are asserted)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from distllm.ops import linear as linear_mod
from evaluation import bench_cpu_linear as bench
from tests.kernels.utils import needs_native


@needs_native
def test_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--iters", "1", "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench_cpu_linear.json").read_text())
    assert (tmp_path / "bench_cpu_linear.png").stat().st_size > 0
    assert {(r["linear"], r["rows"]) for r in report["ops"]} == {
        (name, m) for name in bench.linear_shapes() for m in bench.ROWS}
    assert all(r["f_linear_ms"] > 0 and r["skinny_ms"] > 0 for r in report["ops"])
    assert [r["batch"] for r in report["steps"]] == list(bench.BATCHES)
    assert linear_mod.ENABLED  # the step comparison turns it back on
    assert "decode step of the model" in capsys.readouterr().out


def test_bad_flags_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--iters", "0"])
    assert "--iters" in capsys.readouterr().err
