"""CLI: `simulate` writes the benchmark's .exp schema, `plan` writes a loadable placement,
bad flags fail naming the flag."""
from __future__ import annotations

import json

import pytest

from distllm.placement import load_placement
from distllm.request import Lifetime
from simdist.cli import main, plan_main, simulate_main

EXP_KEYS = {"prompt_len", "output_len", "start_time", "end_time", "token_timestamps",
            "lifecycle_events", "latency", "ttft", "tpot", "error"}


def test_simulate_writes_exp_schema(tmp_path, capsys) -> None:
    out = tmp_path / "run.exp"
    rc = simulate_main(["--model", "opt-13b", "--rate", "3", "--num-requests", "50",
                        "--prefill-tp", "2", "--num-decode", "2", "--ttft-slo-ms", "200",
                        "--tpot-slo-ms", "100", "-o", str(out)])
    assert rc == 0
    exp = json.loads(out.read_text())
    assert set(exp) == {"meta", "requests", "summary"}
    assert exp["meta"]["backend"] == "simdist" and exp["meta"]["rate"] == 3.0
    assert len(exp["requests"]) == 50
    for r in exp["requests"]:
        assert set(r) == EXP_KEYS
        assert len(r["token_timestamps"]) == r["output_len"]
        assert r["ttft"] == pytest.approx(r["token_timestamps"][0] - r["start_time"])
        events = [e.value for e, _ in Lifetime.from_json(r["lifecycle_events"]).events]
        assert events[0] == "arrival" and events[-1] == "decode_end"
    s = exp["summary"]
    assert s["completed"] == 50 and 0 <= s["attainment"] <= 1
    assert set(s["attainment_by_slo_scale"]) >= {"0.5", "1.0", "2.0"}
    assert "p90_ttft_ms" in capsys.readouterr().out


def test_simulate_colocated_chunked_and_placement_file(tmp_path) -> None:
    assert simulate_main(["--mode", "colocated", "--colocated-tp", "2", "--chunk-tokens", "256",
                          "--rate", "2", "--num-requests", "30", "--workload", "humaneval"]) == 0
    placement = tmp_path / "p.json"
    placement.write_text(json.dumps({
        "model": "facebook/opt-13b", "mode": "disaggregated", "hardware": "a100-80g",
        "prefill": {"tp": 2, "pp": 1, "instances": 1}, "decode": {"tp": 1, "pp": 1,
                                                                  "instances": 2},
        "num_nodes": 1, "gpus_per_node": 4}))
    assert main(["simulate", "--placement", str(placement), "--rate", "2",
                 "--num-requests", "30"]) == 0


def test_plan_writes_loadable_placement(tmp_path, capsys) -> None:
    out = tmp_path / "placement.json"
    rc = plan_main(["--model", "opt-13b", "--num-nodes", "1", "--gpus-per-node", "4",
                    "--ttft-slo-ms", "200", "--tpot-slo-ms", "100", "--attainment", "90",
                    "--mode", "disaggregated", "--no-progress", "--max-requests", "1500",
                    "-o", str(out)])
    assert rc == 0
    pl = load_placement(out)
    assert (pl.prefill.tp, pl.decode.tp) == (2, 1)
    assert pl.slo.attainment == 0.9 and pl.predicted["per_gpu_goodput_rps"] > 0
    assert pl.num_gpus <= 4
    text = capsys.readouterr().out
    assert "per-GPU rps" in text and "binding" in text


@pytest.mark.parametrize("argv,flag", [
    (["simulate", "--rate", "1", "--arrival", "weibull"], "--arrival"),
    (["simulate", "--rate", "1", "--num-requests", "0"], "--num-requests"),
    (["simulate", "--num-requests", "5"], "--rate"),
    (["simulate", "--rate", "1", "--prefill-tp", "3"], "--"),
    (["simulate", "--rate", "1", "--workload", "/nonexistent.jsonl"], "--workload"),
    (["plan", "--ttft-slo-ms", "200"], "--tpot-slo-ms"),
    (["plan", "--ttft-slo-ms", "200", "--tpot-slo-ms", "100", "--jobs", "0"], "--jobs"),
    (["plan", "--ttft-slo-ms", "1", "--tpot-slo-ms", "1", "--affinity", "middle"], "--affinity"),
])
def test_bad_flags_name_the_flag(argv: list[str], flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


def test_ablation_writes_json_and_png(tmp_path) -> None:
    rc = main(["ablation", "--model", "opt-13b", "--num-nodes", "1", "--gpus-per-node", "4",
               "--ttft-slo-ms", "200", "--tpot-slo-ms", "100", "--max-requests", "600",
               "--workload", "humaneval", "--no-progress", "--output-dir", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "ablation.json").read_text())
    assert set(data["systems"]) == {"DistServe-High", "DistServe-Low", "vLLM++", "vLLM",
                                    "Chunked-prefill"}
    for d in data["systems"].values():
        if d["config"] is not None:
            att = d["attainment_vs_rate"]
            assert len(att) == len(d["rates_per_gpu"]) and att[0] >= att[-1]
    assert (tmp_path / "ablation.png").stat().st_size > 1000
