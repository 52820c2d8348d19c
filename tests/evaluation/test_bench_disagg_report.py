"""evaluation/bench_disagg_cpu.py's scoring: per-round SLOs and goodputs, the pooled headline
(mean attainment per rate over rounds, each round against its own SLOs), and the flag checks.
Synthetic records only (the benchmark itself runs engines for minutes)."""
from __future__ import annotations

import pytest

from distllm.metrics import RequestRecord
from evaluation import bench_disagg_cpu as bench


def _records(n: int, n_ok: int, ttft_s: float, tpot_s: float) -> list[RequestRecord]:
    """n requests of 9 tokens; the first n_ok meet TPOT tpot_s, the rest take 3x as long."""
    out = []
    for i in range(n):
        step = tpot_s if i < n_ok else 3 * tpot_s
        times = [10.0 * i + ttft_s + k * step for k in range(9)]
        out.append(RequestRecord(100, 9, 10.0 * i, times[-1], times, None))
    return out


def _round(unloaded: dict, ok: dict) -> dict:
    """mode -> its unloaded (prefill s, decode s) and runs with ok[mode][rate index] of 10
    requests meeting TPOT 15 ms (TTFT 0.2 s always meets 4x the best prefill)."""
    return {m: {"unloaded": unloaded[m],
                "runs": [{"rate": rate, "duration_s": 10.0,
                          "records": _records(10, k, 0.2, 0.015)}
                         for rate, k in zip((1.0, 2.0), ok[m], strict=True)]}
            for m in ok}


def test_pooled_ratio_is_the_mean_attainment_over_rounds() -> None:
    args = bench.parse_args(["--rates", "1,2", "--rounds", "2",
                             "--modes", "disaggregated,colocated-2x1"])
    unloaded = {"disaggregated": (0.1, 0.010), "colocated-2x1": (0.12, 0.011)}
    r0 = _round(unloaded, {"disaggregated": (10, 9), "colocated-2x1": (9, 5)})
    r1 = _round(unloaded, {"disaggregated": (10, 8), "colocated-2x1": (8, 5)})
    report = bench.make_report({"rounds": [r0, r1], "migration": {}}, args, (0.0, 0.0, 0.0))
    assert report["rounds"][0]["slo_ms"]["tight"] == pytest.approx((400.0, 20.0))
    # round 0: disagg passes both rates (goodput 2); colocated meets rate 1 (0.9) only
    assert report["rounds"][0]["modes"]["disaggregated"]["tight"]["goodput_rps"] == 2.0
    assert report["rounds"][0]["goodput_ratio_tight"] == pytest.approx(2.0)
    pooled = report["pooled"]
    def attainment(mode: str) -> list[float]:
        return [a for _, a in pooled[mode]["tight"]["attainment"]]

    assert attainment("disaggregated") == pytest.approx([1.0, 0.85])
    assert attainment("colocated-2x1") == pytest.approx([0.85, 0.5])
    # disagg: 1 + (1.0 - 0.9) / (1.0 - 0.85) = 1.667; colocated: 0.85 < 0.9 at rate 1 ->
    # between (0, 1.0) and (1, 0.85): (1.0 - 0.9) / 0.15 = 0.667
    assert pooled["disaggregated"]["tight"]["goodput_rps"] == pytest.approx(5 / 3)
    assert pooled["colocated-2x1"]["tight"]["goodput_rps"] == pytest.approx(2 / 3)
    assert report["goodput_ratio_tight"] == pytest.approx(2.5)
    assert len(report["goodput_ratio_tight_rounds"]) == 2
    # against each colocated mode too (one here): pooled and per round
    assert report["goodput_ratio_tight_by_mode"] == {"colocated-2x1": pytest.approx(2.5)}
    assert [r["colocated-2x1"] for r in report["goodput_ratio_tight_by_mode_rounds"]] == (
        pytest.approx(report["goodput_ratio_tight_rounds"]))
    # loose TPOT (50 ms): every request meets it, so both modes reach the top rate
    assert report["goodput_ratio_loose"] == pytest.approx(1.0)


@pytest.mark.parametrize("argv,message", [
    (["--modes", "disaggregated,nope"], "--modes: unknown"),
    (["--modes", "disaggregated,disaggregated-gloo"], "needs at least one colocated"),
    (["--rounds", "0"], "--rounds must be"),
    (["--unloaded-samples", "0"], "--unloaded-samples must be"),
])
def test_bad_flags_name_the_flag(argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_disaggregated_mode_always_comes_first() -> None:
    args = bench.parse_args(["--modes", "colocated-2x1,disaggregated-gloo"])
    assert args.modes == ["disaggregated", "colocated-2x1", "disaggregated-gloo"]


def test_pool_reports_equals_one_run_of_all_rounds(tmp_path) -> None:  # noqa: ANN001
    import json

    args = bench.parse_args(["--rates", "1,2", "--modes", "disaggregated,colocated-2x1"])
    unloaded = {"disaggregated": (0.1, 0.010), "colocated-2x1": (0.12, 0.011)}
    r0 = _round(unloaded, {"disaggregated": (10, 9), "colocated-2x1": (9, 5)})
    r1 = _round(unloaded, {"disaggregated": (10, 8), "colocated-2x1": (8, 5)})
    paths = []
    for k, rd in enumerate((r0, r1)):
        rep = bench.make_report({"rounds": [rd], "migration": {}}, args, (0.0, 0.0, 0.0))
        paths.append(tmp_path / f"run{k}.json")
        paths[-1].write_text(json.dumps(rep))
    both = bench.make_report({"rounds": [r0, r1], "migration": {}}, args, (0.0, 0.0, 0.0))
    pooled = bench.pool_reports(paths)
    assert pooled["goodput_ratio_tight"] == pytest.approx(both["goodput_ratio_tight"])
    assert pooled["goodput_ratio_tight_rounds"] == pytest.approx(
        both["goodput_ratio_tight_rounds"])
    # a run over other rates cannot be pooled with these
    other = json.loads(paths[1].read_text())
    other["meta"]["rates"] = [1.0, 3.0]
    paths[1].write_text(json.dumps(other))
    with pytest.raises(ValueError, match="--pool-reports"):
        bench.pool_reports(paths)
    # nor a run of the same modes by an engine that ran them otherwise (e.g. before async
    # scheduling: 4-field mode specs)
    other["meta"]["rates"] = [1.0, 2.0]
    other["modes_spec"]["disaggregated"] = ["disaggregated", 1, 1, "auto"]
    paths[1].write_text(json.dumps(other))
    with pytest.raises(ValueError, match="ran its modes as"):
        bench.pool_reports(paths)
    # nor one whose prefill batches were capped otherwise
    other["modes_spec"] = both["modes_spec"]
    other["meta"]["prefill_saturation_tokens"] = None
    paths[1].write_text(json.dumps(other))
    with pytest.raises(ValueError, match="capped prefill batches at None tokens"):
        bench.pool_reports(paths)


def test_default_modes_compare_async_scheduling_side_by_side() -> None:
    args = bench.parse_args([])
    assert args.modes == ["disaggregated", "disaggregated-sync", "colocated-2x1",
                          "colocated-2x1-sync", "colocated-1x2"]
    assert {m: bench.MODES[m][4] for m in args.modes} == {
        "disaggregated": True, "disaggregated-sync": False, "colocated-2x1": True,
        "colocated-2x1-sync": False, "colocated-1x2": True}
