"""Fixtures for simdist tests: a toy profile with round coefficients for hand-computed runs."""
from __future__ import annotations

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


def fixed_workload(prompts: list[int], outputs: list[int], arrivals: list[float]) -> Workload:
    """Arrivals at the given times when run at rate 1 (unit gaps = differences)."""
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)] + [1.0]
    assert arrivals[0] == 0.0
    return Workload(tuple(prompts), tuple(outputs), tuple(gaps), None, "toy", "fixed")


@pytest.fixture
def toy() -> LatencyProfile:
    return toy_profile()
