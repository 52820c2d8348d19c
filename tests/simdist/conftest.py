"""Fixtures for simdist tests: a toy profile with round coefficients for hand-computed runs, and
a frozen demo profile without what calibration adds (the base the calibration tests fit from)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from simdist.profile import LatencyProfile
from simdist.workload import Workload


def toy_profile(capacity: int = 100_000, prefill: dict | None = None,
                decode: dict | None = None) -> LatencyProfile:
    """Model "toy": prefill 10 ms + 0.1 ms/token, decode 5 ms + 1 ms/request (TP1); 1000 KV
    bytes per token; NVLink 1 GB/s, network 0.1 GB/s; no overheads."""
    prefill = prefill or {1: [10.0, 0.1, 0.0]}
    decode = decode or {tp: [5.0, 0.0, 1.0] for tp in prefill}
    tps = {str(tp): {"prefill": prefill[tp], "decode_small": decode[tp],
                     "decode_large": decode[tp], "decode_threshold": 95} for tp in prefill}
    caps = {f"{tp}x{pp}": capacity * tp * pp for tp in prefill for pp in (1, 2, 4, 8)}
    models = {"toy": {"kv_bytes_per_token": 1000, "tp": tps, "kv_capacity_tokens": caps}}
    return LatencyProfile("toy", models, "toy", {}, {"nvlink_gb_s": 1.0, "network_gb_s": 0.1},
                          "toy")


def plain_demo_profile() -> LatencyProfile:
    """A frozen copy of the demo model's CPU profile (data/cpu_demo_base_profile.json, shipped
    until the engine changed; the calibration tests' synthetic rounds depend on its regime,
    not on whatever simdist/profiles/cpu-demo.json holds now), without contention
    coefficients or a fixed decode step: the tests simulate "real" rounds with their own."""
    d = json.loads((Path(__file__).parent / "data" / "cpu_demo_base_profile.json").read_text())
    d["host"] = {k: v for k, v in d["host"].items() if not k.startswith("contention_")}
    d["overhead"] = {k: v for k, v in d["overhead"].items() if k != "decode_step_ms"}
    return LatencyProfile.from_dict(d)


def fixed_workload(prompts: list[int], outputs: list[int], arrivals: list[float]) -> Workload:
    """Arrivals at the given times when run at rate 1 (unit gaps = differences)."""
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)] + [1.0]
    assert arrivals[0] == 0.0
    return Workload(tuple(prompts), tuple(outputs), tuple(gaps), None, "toy", "fixed")


@pytest.fixture
def toy() -> LatencyProfile:
    return toy_profile()
