"""Placement JSON: round trip and clear errors on bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distllm.placement import SLO, Placement, StagePlacement, load_placement, save_placement


def test_roundtrip(tmp_path: Path) -> None:
    p = Placement(
        model="facebook/opt-13b",
        hardware="a100-80g",
        prefill=StagePlacement(tp=2),
        decode=StagePlacement(tp=1),
        gpus_per_node=4,
        slo=SLO(200, 100, 0.9),
        predicted={"per_gpu_goodput_rps": 2.0},
    )
    save_placement(p, tmp_path / "p.json")
    q = load_placement(tmp_path / "p.json")
    assert q == p and q.num_gpus == 3


def test_colocated_needs_its_stage() -> None:
    with pytest.raises(ValueError, match="colocated"):
        Placement(model="m", mode="colocated")
    assert (
        Placement(model="m", mode="colocated", colocated=StagePlacement(tp=2, instances=2)).num_gpus
        == 4
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"model": "m", "mode": "both"}, "mode"),
        ({"model": "m", "prefill": {"tp": 0}, "decode": {}}, "tp"),
        ({"model": "m", "prefill": {}, "decode": {}, "surprise": 1}, "unknown keys"),
        ({"model": "m", "prefill": {}, "decode": {}, "slo": {"ttft_ms": -1, "tpot_ms": 1}}, "slo"),
    ],
)
def test_bad_placements_name_the_field(tmp_path: Path, bad: dict, match: str) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=match):
        load_placement(f)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_placement(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_placement(tmp_path / "x.json")
