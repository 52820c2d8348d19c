"""simdist.profile.DecodeTable: measured decode steps interpolated (exact at the points, linear
between them, the regime model carried on from the edges) and StageCost's use of it."""
from __future__ import annotations

import copy

import pytest

from simdist.calibrate import _scaled
from simdist.cluster import ClusterSpec, InstanceSpec, simulate
from simdist.profile import DecodeTable, LatencyProfile

from .conftest import fixed_workload, toy_profile

A = pytest.approx
POINTS = [[1, 64, 3.0], [1, 256, 4.0], [4, 256, 5.0], [4, 1024, 9.0], [8, 512, 8.0],
          [8, 2048, 12.0]]


def _model(batch: int, sum_ctx: int) -> float:  # seconds
    return 1e-3 * (2.0 + 0.005 * sum_ctx + 0.5 * batch)


def test_exact_at_the_points_and_linear_between() -> None:
    t = DecodeTable(POINTS, _model)
    for b, n, ms in POINTS:
        assert t(b, n) == A(ms * 1e-3)
    assert t(1, 160) == A(3.5e-3)  # half-way in context at batch 1
    assert t(4, 640) == A(7.0e-3)  # 160 tokens per request: half-way at batch 4
    b1, b4 = t(1, 160), t(4, 4 * 160)  # batch 2: linear in the batch size between 1 and 4
    assert t(2, 2 * 160) == A(b1 + (b4 - b1) * (2 - 1) / 3)
    assert t(6, 6 * 200) == A(t(4, 800) + (t(8, 1600) - t(4, 800)) / 2)


def test_beyond_the_grid_the_model_carries_on_from_the_edge() -> None:
    t = DecodeTable(POINTS, _model)
    # a longer context at batch 1: the edge point scaled by the model's growth
    assert t(1, 512) == A(4.0e-3 * _model(1, 512) / _model(1, 256))
    assert t(1, 32) == A(3.0e-3 * _model(1, 32) / _model(1, 64))
    # a larger batch than measured: batch 8's curve, scaled by the model from batch 8 to 16
    assert t(16, 16 * 128) == A(t(8, 8 * 128) * _model(16, 2048) / _model(8, 1024))
    # continuous at the edges
    assert t(8, 2048 * (1 + 1e-9)) == A(12.0e-3) and t(1, 64 * (1 - 1e-9)) == A(3.0e-3)


def test_bad_points_are_refused() -> None:
    with pytest.raises(ValueError, match="bad point"):
        DecodeTable([[0, 10, 1.0]], _model)
    with pytest.raises(ValueError, match="bad point"):
        DecodeTable([[1, 10, 0.0]], _model)
    with pytest.raises(ValueError, match="empty"):
        DecodeTable([], _model)


def _with_points(prof: LatencyProfile, points: list) -> LatencyProfile:
    d = copy.deepcopy(prof.to_dict())
    d["models"]["toy"]["tp"]["1"]["decode_points"] = points
    return LatencyProfile.from_dict(d)


def test_stage_cost_uses_the_table_at_pp1_only_and_calibration_scales_it() -> None:
    toy = toy_profile()  # decode 5 ms + 1 ms per request
    points = [[b, b * c, 5.0 + b + 0.5 * (b == 2)] for b in (1, 2, 4) for c in (10, 100)]
    prof = _with_points(toy, points)
    cost = prof.stage_cost("toy", 1, 1)
    assert cost.decode(2, 20) == A(7.5e-3) and cost.decode(1, 50) == A(6e-3)
    assert toy.stage_cost("toy", 1, 1).table is None  # absent: the regimes
    assert prof.stage_cost("toy", 1, 2).table is None  # the table holds whole steps
    scaled = LatencyProfile.from_dict(_scaled(prof.to_dict(), "toy", {
        "prefill": 1.0, "decode": 2.0, "transfer": 1.0}))
    assert scaled.stage_cost("toy", 1, 1).decode(2, 20) == A(15e-3)


def test_a_table_of_the_regime_model_simulates_as_the_model() -> None:
    toy = toy_profile()
    points = [[b, b * c, 5.0 + b] for b in (1, 2, 4, 8) for c in (16, 64, 256)]
    wl = fixed_workload([100, 60, 80], [6, 9, 4], [0.0, 0.003, 0.004])
    spec = ClusterSpec("toy", (InstanceSpec("prefill"), InstanceSpec("decode")))
    a = simulate(spec, toy, wl, 1.0).requests
    b = simulate(spec, _with_points(toy, points), wl, 1.0).requests
    for ra, rb in zip(a, b, strict=True):
        assert rb.token_timestamps() == A(ra.token_timestamps(), abs=1e-12)
