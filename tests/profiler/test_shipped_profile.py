"""The shipped CPU profile of the demo model and the demo's plan / report stages that use it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from distllm.entrypoints import demo
from simdist.profile import load_profile


def test_cpu_demo_profile_loads_with_kv_and_transfer_figures() -> None:
    prof = load_profile("cpu-demo")
    assert prof.tps(demo.PROFILE_MODEL) == [1]
    assert prof.kv_capacity(demo.PROFILE_MODEL, 1) == 2048 * 16  # the demo's --num-kv-blocks
    assert prof.kv_bytes_per_token(demo.PROFILE_MODEL) == 2 * 4 * 2 * 32 * 4  # layers, kv, fp32
    cost = prof.stage_cost(demo.PROFILE_MODEL, 1)
    assert 0 < cost.prefill_stage(190, 190 * 190) < cost.prefill_stage(760, 4 * 190 * 190)
    assert 0 < cost.decode(1, 200) < cost.decode(32, 32 * 200)
    assert prof.bandwidth_gb_s("nvlink") > 0 and prof.overhead["transfer_ms"] >= 0


def test_demo_plans_a_disaggregated_placement_with_the_shipped_profile(tmp_path: Path) -> None:
    rows = [{"prompt": "x", "prompt_len": 60 + 13 * i, "output_len": 10 + i % 40}
            for i in range(50)]
    workload = tmp_path / "workload.jsonl"
    workload.write_text("".join(json.dumps(r) + "\n" for r in rows))
    slo = demo.default_slo("cpu-demo", workload)
    assert slo[0] > 0 and slo[1] > 0
    args = argparse.Namespace(profile="cpu-demo", seed=0)
    placement = demo.plan(workload, tmp_path, args, slo)
    assert placement["mode"] == "disaggregated"
    assert placement["prefill"]["tp"] == placement["decode"]["tp"] == 1
    assert placement["predicted"]["cluster_goodput_rps"] > 0
    assert (tmp_path / "placement.json").is_file()


def test_demo_comparison_table_reports_errors() -> None:
    terms = {"queueing": 1.0, "prefill": 10.0, "transfer": 2.0, "decode": 3.0}
    measured = {"attainment": 0.8, "p50_ttft_ms": 50.0, "p90_ttft_ms": 100.0,
                "p50_tpot_ms": 5.0, "p90_tpot_ms": 10.0, "terms_ms": terms}
    predicted = {**measured, "attainment": 0.9, "p90_ttft_ms": 110.0}
    text = demo.format_comparison(measured, predicted)
    assert "+10.0 pp" in text and "+10.0 %" in text
    with pytest.raises(KeyError):
        demo.format_comparison({}, predicted)


def test_cpu_demo_profile_has_a_measured_host_section_and_the_demo_prints_it() -> None:
    from simdist.host import HostSpec

    prof = load_profile("cpu-demo")
    spec = HostSpec.from_dict(prof.host)
    assert spec is not None and spec.cores == 2 and spec.frontend_cpu_ms_per_step > 0
    assert spec.background_cores == 0.0  # shipped for a quiet host
    terms = {"queueing": 1.0, "prefill": 10.0, "transfer": 2.0, "decode": 3.0}
    measured = {"attainment": 0.8, "p50_ttft_ms": 50.0, "p90_ttft_ms": 100.0,
                "p50_tpot_ms": 5.0, "p90_tpot_ms": 10.0, "terms_ms": terms,
                "host": {**prof.host, "frontend_cpu_ms_per_step": 3.25}}
    text = demo.format_comparison(measured, measured, prof.host)
    assert "frontend CPU/step (ms)" in text and "3.250" in text
