"""evaluation/reliability_report.py end to end, short: one fault, the overload burst and a
short soak; the table and the JSON say every row recovered with nothing lost or leaked."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation import reliability_report


@pytest.mark.slow
def test_report_short(ray_cluster: None, tiny_model: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "reliability.json"
    code = reliability_report.main(["--model", str(tiny_model), "--soak-requests", "200",
                                    "--burst", "100", "--faults", "decode_killed_mid_step",
                                    "--json", str(out)])
    table = capsys.readouterr().out
    assert code == 0, table
    report = json.loads(out.read_text())
    assert report["passed"]
    rows = {r["scenario"]: r for r in report["rows"]}
    assert set(rows) == {"decode_killed_mid_step", "overload", "soak"}
    for name, row in rows.items():
        assert row["no_response"] == 0 and row["blocks_leaked"] == 0 and row["recovered"]
        assert name in table
    assert rows["decode_killed_mid_step"]["affected"] > 0
    assert rows["overload"]["affected"] > 0  # the burst did overflow the queue


def test_table_marks_a_failed_row() -> None:
    from evaluation.reliability_scenarios import ScenarioResult

    bad = ScenarioResult("x", "y", 3, 1, False, None, 1, 2)
    assert "NO" in reliability_report.format_table([bad])
    assert not reliability_report.passed([bad])
