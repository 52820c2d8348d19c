"""Goodput search and planner: monotone attainment, a toy cost model with a known optimum, the
M:N ratio, and DistServe's README case on the A100 profile."""
from __future__ import annotations

import pytest

from simdist.cluster import ClusterSpec, InstanceSpec, simulate
from simdist.goodput import GoodputResult, GoodputTask, search_goodput
from simdist.planner import PlanRequest, _group, rank, search_colocated, search_high, search_low
from simdist.profile import load_profile
from simdist.runner import TaskRunner
from simdist.workload import make_workload

from .conftest import toy_profile


@pytest.mark.parametrize("spec", [
    ClusterSpec("opt-13b", (InstanceSpec("prefill", 2), InstanceSpec("decode", 1))),
    ClusterSpec("opt-13b", (InstanceSpec("colocated", 2),)),
])
def test_attainment_does_not_rise_with_rate(spec: ClusterSpec) -> None:
    prof = load_profile("distserve-a100")
    wl = make_workload("sharegpt", 400, seed=0)
    atts = [simulate(spec, prof, wl, rate).attainment(200, 100) for rate in (1, 2, 4, 6, 8, 12)]
    assert atts == sorted(atts, reverse=True)
    assert atts[0] > 0.9 > atts[-1]


def _toy_for_planner():  # noqa: ANN202
    # prefill: TP2 is superlinear (best per GPU); decode: TP buys nothing (TP1 best per GPU)
    prefill = {1: [60.0, 0.4, 0.0], 2: [10.0, 0.08, 0.0], 4: [10.0, 0.07, 0.0]}
    decode = {1: [20.0, 0.0, 0.2], 2: [20.0, 0.0, 0.2], 4: [20.0, 0.0, 0.2]}
    return toy_profile(capacity=200_000, prefill=prefill, decode=decode)


def test_goodput_search_brackets_the_target() -> None:
    prof = _toy_for_planner()
    wl = make_workload("humaneval", 300, seed=0)
    spec = ClusterSpec("toy", (InstanceSpec("prefill", 2), InstanceSpec("decode", 1)))
    res = search_goodput(GoodputTask("x", spec, 200, 100, 0.9), prof, wl)
    assert res.per_gpu_rps > 0 and res.attainment >= 0.9
    above = [a for r, a in res.points if r > res.per_gpu_rps]
    assert above and min(above) < 0.9 or max(above) < 0.9
    none = search_goodput(GoodputTask("x", spec, 1.0, 100, 0.9), prof, wl)
    assert none.per_gpu_rps == 0.0 and none.points == []  # idle bound rules it out


def test_toy_cost_model_known_optimum_both_affinities() -> None:
    prof = _toy_for_planner()
    wl = make_workload("humaneval", 2000, seed=0)  # decode runs need many (steady_requests)
    runner = TaskRunner(prof, wl, progress=False)
    for search, nodes, gpn in ((search_high, 2, 4), (search_low, 1, 4)):
        req = PlanRequest("toy", nodes, gpn, 300, 100, 0.9, mode="disaggregated",
                          affinity="high" if search is search_high else "low")
        best = rank(search(req, prof, wl, runner))[0]
        p = [i for i in best.result.spec.instances if i.role == "prefill"]
        d = [i for i in best.result.spec.instances if i.role == "decode"]
        assert (p[0].tp, p[0].pp, d[0].tp, d[0].pp) == (2, 1, 1, 1), best.label


def test_group_balances_rates_m_to_n() -> None:
    req = PlanRequest("toy", 1, 8, 200, 100)
    p = GoodputResult("p", ClusterSpec("toy", (InstanceSpec("prefill", 2),)), 5.0, "ttft", 0.9,
                      0, 0)  # 10 rps per 2-GPU instance
    d = GoodputResult("d", ClusterSpec("toy", (InstanceSpec("decode", 1),)), 5.0, "tpot", 0.9,
                      0, 0)  # 5 rps per 1-GPU instance
    spec, reps = _group(req, p, d)
    roles = [i.role for i in spec.instances]
    assert (roles.count("prefill"), roles.count("decode")) == (1, 2)
    assert reps == 2  # two 4-GPU groups fill the 8-GPU node


def test_readme_case_opt13b_a100_chooses_tp2_tp1() -> None:
    prof = load_profile("distserve-a100")
    wl = make_workload("sharegpt", 4000, seed=0)
    req = PlanRequest("facebook/opt-13b", 1, 4, 200, 100, 0.9, affinity="low")
    best = rank(search_low(req, prof, wl, TaskRunner(prof, wl, progress=False)))[0]
    p = [i for i in best.result.spec.instances if i.role == "prefill"]
    d = [i for i in best.result.spec.instances if i.role == "decode"]
    assert (p[0].tp, p[0].pp, d[0].tp, d[0].pp) == (2, 1, 1, 1)
    assert best.result.attainment >= 0.9


def test_colocated_search_ranks_feasible_configs() -> None:
    prof = _toy_for_planner()
    wl = make_workload("humaneval", 300, seed=0)
    req = PlanRequest("toy", 1, 4, 300, 100, 0.9, mode="colocated")
    cands = rank(search_colocated(req, prof, wl, TaskRunner(prof, wl, progress=False)))
    assert cands[0].result.per_gpu_rps >= cands[-1].result.per_gpu_rps
    assert all(c.num_gpus <= 4 for c in cands)


def test_parallel_runner_matches_serial() -> None:
    prof = _toy_for_planner()
    wl = make_workload("humaneval", 300, seed=0)
    tasks = [GoodputTask(f"p{tp}", ClusterSpec("toy", (InstanceSpec("prefill", tp),)), 200, None,
                         0.9, 5.0) for tp in (1, 2, 4)]
    serial = TaskRunner(prof, wl, 1, progress=False).run(tasks, "serial")
    pool = TaskRunner(prof, wl, 2, progress=False)
    try:
        parallel = pool.run(tasks, "parallel")
    finally:
        pool.close()
    assert [r.per_gpu_rps for r in serial] == [r.per_gpu_rps for r in parallel]
    assert [r.label for r in parallel] == ["p1", "p2", "p4"]
