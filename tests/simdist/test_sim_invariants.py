"""Conservation invariants over seeded random runs: every request ends with exactly its output
tokens in order, and every instance gives back all KV and batch slots."""
from __future__ import annotations

import pytest

from distllm.request import LifecycleEvent as E
from simdist.cluster import ClusterSpec, InstanceSpec, SchedulerSpec, simulate
from simdist.profile import load_profile
from simdist.workload import make_workload

P, D, C = InstanceSpec("prefill", 2), InstanceSpec("decode", 1), InstanceSpec("colocated", 2)
CASES = {
    "2p2d": ClusterSpec("opt-13b", (P, P, D, InstanceSpec("decode", 1, node=1))),
    "2p2d_tight_kv": ClusterSpec("opt-13b", (P, P, D, D), SchedulerSpec(kv_capacity_scale=0.06)),
    "pp_prefill": ClusterSpec("opt-13b", (InstanceSpec("prefill", 1, 4),
                                          InstanceSpec("decode", 2))),
    "colocated_tight": ClusterSpec("opt-13b", (C,), SchedulerSpec(kv_capacity_scale=0.03)),
    "colocated_tight_async": ClusterSpec("opt-13b", (C,), SchedulerSpec(kv_capacity_scale=0.03,
                                                                       async_lag=True)),
    "2p2d_tight_kv_async": ClusterSpec("opt-13b", (P, P, D, D), SchedulerSpec(
        kv_capacity_scale=0.06, async_lag=True)),
    "chunked_tight": ClusterSpec("opt-13b", (C, C), SchedulerSpec(chunk_tokens=256,
                                                                   kv_capacity_scale=0.03)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed,rate", [(0, 3.0), (1, 12.0)])
def test_tokens_and_resources_are_conserved(name: str, seed: int, rate: float) -> None:
    prof = load_profile("distserve-a100")
    wl = make_workload("sharegpt", 250, seed=seed, arrival="gamma", cv=2.0)
    res = simulate(CASES[name], prof, wl, rate)
    for r in res.requests:
        if r.error is not None:
            continue
        ts = r.token_timestamps()
        assert len(ts) == r.output_len and ts == sorted(ts) and ts[0] > r.arrival
        times = [t for _, t in r.log]
        assert times == sorted(times)
        assert r.log[-1][0] is E.DECODE_END and r.batch is None
    assert sum(r.error is None for r in res.requests) >= 0.95 * len(res.requests)
    cl = res.cluster
    for inst in cl.prefills:
        assert inst.kv_used == 0 and inst.queued_tokens == 0 and not inst.waiting
    for inst in cl.decodes:
        assert (inst.reserved, inst.incoming, inst.pending_tokens) == (0, 0, 0)
        assert not inst.arrived and not inst.deferred
        assert inst.batch.size == 0 and inst.batch.sum_ctx == 0 and not inst.recompute
    for inst in cl.colocated:
        assert (inst.reserved, inst.queued_tokens, inst.batch.size) == (0, 0, 0)
        assert not inst.prefilling and not inst.waiting and inst.batch.sum_ctx == 0
        assert inst.queued is None and not inst.ready and not inst.busy
    assert cl.num_finished == len(res.requests)


def test_tight_kv_actually_preempts() -> None:
    prof = load_profile("distserve-a100")
    wl = make_workload("sharegpt", 250, seed=1)
    for name in ("2p2d_tight_kv", "colocated_tight", "colocated_tight_async",
                 "2p2d_tight_kv_async"):
        res = simulate(CASES[name], prof, wl, 12.0)
        resumed = [r for r in res.requests if sum(e is E.DECODE_BEGIN for e, _ in r.log) > 1]
        assert resumed, name
