"""Profiles (shipped, DistServe importer, roofline), model zoo and workloads."""
from __future__ import annotations

import json

import numpy as np
import pytest

from simdist.hardware import HARDWARE, MODELS, get_model, resolve_model_name
from simdist.profile import PROFILE_DIR, LatencyProfile, import_distserve, load_profile
from simdist.roofline import roofline_profile
from simdist.workload import PRESETS, make_workload, unit_gaps

REF = "/work/shared/reference/distserve-a100"


def test_shipped_profile_matches_importer() -> None:
    shipped = load_profile("distserve-a100")
    cost = shipped.stage_cost("opt-13b", 2)
    # DistServe prefill TP2 = [14.74.., 0.0686.., 2.45e-6] ms, plus 2 ms + 1e-4 ms/token + 1 ms
    n = 1000
    want = (14.742973695171262 + 0.06857720739764 * n + 2.4495727400243586e-06 * n * n
            + 2.0 + 1e-4 * n + 1.0) * 1e-3
    assert cost.prefill_stage(n, n * n) == pytest.approx(want, rel=1e-12)
    assert shipped.kv_capacity("facebook/opt-13b", 1, 1) == 66144
    assert shipped.kv_bytes_per_token("opt-13b") == 2 * 40 * 5120 * 2
    try:
        fresh = import_distserve(f"{REF}/profiler-a100-80g.distserve.json",
                                 f"{REF}/max_num_tokens.csv")
    except FileNotFoundError:
        pytest.skip("reference data not mounted")
    assert fresh.models == shipped.models


def test_decode_regimes_and_pipeline_division() -> None:
    prof = load_profile("distserve-a100")
    c1, c2 = prof.stage_cost("opt-13b", 1, 1), prof.stage_cost("opt-13b", 1, 2)
    small, large = c1.decode(94, 50_000), c1.decode(95, 50_000)
    assert small != large  # threshold 95 switches coefficient sets
    assert c2.decode(94, 50_000) < small
    assert c2.prefill_stage(500, 250_000) < c1.prefill_stage(500, 250_000)


def test_profile_json_roundtrip_and_errors(tmp_path) -> None:
    prof = load_profile("vllm-a100")
    path = tmp_path / "p.json"
    prof.save(path)
    assert LatencyProfile.from_dict(json.loads(path.read_text())).models == prof.models
    with pytest.raises(KeyError, match="TP=3"):
        prof.stage_cost("opt-13b", 3)
    with pytest.raises(FileNotFoundError):
        load_profile(tmp_path / "missing.json")
    assert (PROFILE_DIR / "a100-80g.vllm.json").is_file()


def test_model_zoo_dims() -> None:
    assert set(MODELS) >= {"facebook/opt-175b", "meta-llama/Meta-Llama-3-70B"}
    assert get_model("llama-3-8b").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # GQA
    assert 12.5e9 < get_model("opt-13b").num_params < 13.5e9
    assert 6.5e9 < get_model("llama-2-7b").num_params < 7e9
    assert 68e9 < get_model("llama-2-70b").num_params < 71e9
    assert resolve_model_name("OPT-66B") == "facebook/opt-66b"
    with pytest.raises(KeyError):
        get_model("gpt-5")


def test_roofline_is_monotone_in_tp_and_hardware() -> None:
    a100 = roofline_profile(["llama-2-13b"], "a100-80g")
    h100 = roofline_profile(["llama-2-13b"], "h100-80g")
    n = 1024
    t = {tp: a100.stage_cost("llama-2-13b", tp).prefill_stage(n, n * n) for tp in (1, 2, 4)}
    assert t[1] > t[2] > t[4]
    assert h100.stage_cost("llama-2-13b", 1).prefill_stage(n, n * n) < t[1]
    d = [a100.stage_cost("llama-2-13b", 1).decode(b, b * 1000) for b in (1, 16, 64)]
    assert d == sorted(d)
    assert a100.kv_capacity("llama-2-13b", 1) > 0
    assert roofline_profile(["opt-175b"], "a100-80g").kv_capacity("opt-175b", 2, 1) == 0
    assert set(HARDWARE) == {"a100-80g", "h100-80g", "h200-141g"}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_fit_context_and_are_seeded(preset: str) -> None:
    a = make_workload(preset, 500, seed=1)
    assert a == make_workload(preset, 500, seed=1)
    assert a != make_workload(preset, 500, seed=2)
    lens = zip(a.prompt_lens, a.output_lens, strict=True)
    assert all(p + o <= 2048 and p >= 1 and o >= 1 for p, o in lens)
    mean_p = sum(a.prompt_lens) / len(a)
    assert 0.5 * PRESETS[preset][0] < mean_p < 1.3 * PRESETS[preset][0]


def test_arrival_processes() -> None:
    rng = np.random.default_rng(0)
    for kind in ("poisson", "gamma", "fixed"):
        gaps = unit_gaps(kind, 20_000, rng, cv=2.0)
        assert sum(gaps) / len(gaps) == pytest.approx(1.0, rel=0.05)
    cv = np.std(unit_gaps("gamma", 20_000, rng, cv=2.0))
    assert cv == pytest.approx(2.0, rel=0.1)
    wl = make_workload("humaneval", 10, arrival="fixed")
    assert wl.arrivals(2.0) == pytest.approx([i * 0.5 for i in range(10)])
    with pytest.raises(ValueError, match="rate"):
        wl.arrivals(0.0)


def test_jsonl_workload_and_trace(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": "x", "prompt_len": 10 + i, "output_len": 5, "arrival_s": 3.0 + i}
            for i in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    wl = make_workload(str(path), 4, arrival="trace")
    assert wl.prompt_lens == (10, 11, 12, 13)
    assert wl.arrivals(None) == [0.0, 1.0, 2.0, 3.0]
    sampled = make_workload(str(path), 10, seed=0)
    assert len(sampled) == 10 and set(sampled.prompt_lens) <= {10, 11, 12, 13}
    path.write_text('{"prompt": "x", "prompt_len": "10", "output_len": 5}\n')
    with pytest.raises(ValueError, match="prompt_len"):
        make_workload(str(path), 1)


def test_distserve_ds_file(tmp_path) -> None:
    import marshal

    path = tmp_path / "sharegpt.ds"
    path.write_bytes(marshal.dumps({"dataset_name": "x", "reqs": [("hi", 7, 3), ("yo", 9, 4)]}))
    wl = make_workload(str(path), 6, seed=0)
    assert set(wl.prompt_lens) <= {7, 9} and len(wl) == 6


def test_profile_fit_recovers_coefficients() -> None:
    from simdist.profile_fit import profile_entry

    rng = np.random.default_rng(0)
    pre, dec = [], []
    for _ in range(40):
        ls = rng.integers(16, 2048, rng.integers(1, 6)).tolist()
        pre.append((ls, 12.0 + 0.05 * sum(ls) + 3e-6 * sum(x * x for x in ls)))
        b = int(rng.integers(1, 256))
        c = int(b * rng.integers(100, 1500))
        dec.append((b, c, (9.0 + 2e-4 * c + 0.04 * b) if b < 95 else (7.0 + 1e-4 * c + 0.1 * b)))
    entry = profile_entry(pre, dec)
    assert entry["prefill"] == pytest.approx([12.0, 0.05, 3e-6], rel=1e-6)
    assert entry["decode_small"] == pytest.approx([9.0, 2e-4, 0.04], rel=1e-6)
    assert entry["decode_large"] == pytest.approx([7.0, 1e-4, 0.1], rel=1e-6)
    with pytest.raises(ValueError, match="prefill"):
        profile_entry(pre[:2], dec)
