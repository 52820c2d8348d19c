"""evaluation/bench_disagg_bound.py: simdist's ceiling on the disaggregated / colocated goodput
ratio of the registered CPU benchmark, on a synthetic profile (no engine, a few seconds)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from distllm.metrics import max_rate_meeting
from evaluation import bench_disagg_bound as bound

# a one-thread profile of the bench's model, shaped like this host's (prefill ~240 ms for 512
# tokens, decode step ~6 ms)
PROFILE = {
    "format": "distllm-profile-v1", "hardware": "cpu", "engine": "distllm",
    "overhead": {"iteration_ms": 0.0, "per_token_ms": 0.0, "prefill_stage_ms": 0.0,
                 "transfer_ms": 4.0},
    "interconnect": {"nvlink_gb_s": 0.2, "network_gb_s": 0.2},
    "models": {"bench": {"kv_bytes_per_token": 16384, "tp": {"1": {
        "prefill": [9.0, 0.37, 0.00016], "decode_small": [3.8, 0.0014, 1.3],
        "decode_large": [11.0, 0.0015, 0.38], "decode_threshold": 16}},
        "kv_capacity_tokens": {"1x1": 16384}}},
}
FAST = ["--seeds", "2", "--num-requests", "12", "--rates", "0.5,1,2,3",
        "--ttft-multiples", "2.5,4"]


def _bench_report(path: Path) -> Path:
    """A bench_disagg_cpu.json with one round (only the fields the bound reads)."""
    path.write_text(json.dumps({"rounds": [{
        "unloaded_ms": {"disaggregated": [200.0, 5.2], "colocated-2x1": [190.0, 4.8]},
        "slo_ms": {"tight": [600.0, 9.6], "loose": [600.0, 24.0]},
        "goodput_ratio_tight": 1.1}]}))
    return path


def _run(tmp_path: Path, profile: dict, extra: list[str] = ()) -> dict:
    prof = tmp_path / "profile.json"
    prof.write_text(json.dumps(profile))
    out = tmp_path / "out"
    assert bound.main(["--profile", str(prof), "-o", str(out), *FAST, *extra]) == 0
    assert (out / "bench_disagg_bound.png").stat().st_size > 0
    return json.loads((out / "bench_disagg_bound.json").read_text())


def test_bound_scores_the_bench_workload_per_variant(tmp_path: Path, capsys) -> None:
    report = _run(tmp_path, PROFILE, ["--bench-report", str(_bench_report(tmp_path / "r.json"))])
    assert list(report["variants"]) == ["ideal", "profiled transfer"]  # no host section
    for v in report["variants"].values():
        u = v["unloaded_ms"]
        # one 512-token prompt alone: the profile's prefill; its TPOT at least a decode step
        assert u["prefill"] == pytest.approx(9.0 + 0.37 * 512 + 0.00016 * 512 ** 2, rel=0.02)
        assert u["tpot"] >= 3.8 + 1.3
        assert v["slo_ms"]["2.5"] == pytest.approx([2.5 * u["prefill"], 2.0 * u["tpot"]])
        for k, goodputs in v["goodput_rps"].items():
            for mode, rows in v["rows"].items():
                # the goodput is the bench's estimator over these rows
                assert goodputs[mode] == pytest.approx(max_rate_meeting(
                    [(r["rate"], r["attainment"][k]) for r in rows], 0.9))
                assert all(0.0 <= r["attainment"][k] <= 1.0 for r in rows)
            assert v["ratio"][k] == pytest.approx(
                goodputs["disaggregated"] / goodputs["colocated-2x1"])
        # a looser TTFT SLO never lowers attainment
        for rows in v["rows"].values():
            assert all(r["attainment"]["4.0"] >= r["attainment"]["2.5"] for r in rows)
    # free KV moves never lower the disaggregated attainment
    ideal, real = (report["variants"][n]["rows"]["disaggregated"]
                   for n in ("ideal", "profiled transfer"))
    assert all(a["attainment"]["2.5"] >= b["attainment"]["2.5"]
               for a, b in zip(ideal, real, strict=True))
    # colocated rows do not depend on the transfer
    assert (report["variants"]["ideal"]["rows"]["colocated-2x1"]
            == report["variants"]["profiled transfer"]["rows"]["colocated-2x1"])
    (m,) = report["measured"]
    assert m["ttft_multiple"] == pytest.approx(3.0) and m["ratio"] == 1.1
    assert "ratio 1.10" in capsys.readouterr().out


def test_host_section_adds_a_variant(tmp_path: Path) -> None:
    profile = {**PROFILE, "host": {"cores": 2, "contention_prefill": 0.1,
                                   "contention_decode": 0.1}}
    report = _run(tmp_path, profile, ["--ttft-multiples", "3"])
    assert list(report["variants"]) == ["ideal", "profiled transfer", "host"]


@pytest.mark.parametrize("argv, flag", [
    (["--rates", "0,1"], "--rates"),
    (["--seeds", "0"], "--seeds"),
    (["--ttft-multiples", ""], "--ttft-multiples"),
    (["--profile", "/nonexistent.json"], "/nonexistent.json"),
])
def test_bad_flags_name_the_flag(argv: list[str], flag: str, capsys) -> None:
    with pytest.raises(SystemExit):
        bound.parse_args(argv)
    assert flag in capsys.readouterr().err


def test_profile_without_the_bench_model_is_refused(tmp_path: Path) -> None:
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({**PROFILE, "models": {"other": PROFILE["models"]["bench"]}}))
    with pytest.raises(SystemExit, match="no model 'bench'"):
        bound.main(["--profile", str(prof), "-o", str(tmp_path / "o"), *FAST])
