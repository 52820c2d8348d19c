"""Hand-computed runs on the toy profile: exact timestamps for every instance kind."""
from __future__ import annotations

import pytest

from distllm.request import LifecycleEvent as E
from simdist.cluster import ClusterSpec, InstanceSpec, SchedulerSpec, simulate
from simdist.core import EventKind, Simulator

from .conftest import fixed_workload, toy_profile

A = pytest.approx


def _disagg(**kw: object) -> ClusterSpec:
    return ClusterSpec("toy", (InstanceSpec("prefill"), InstanceSpec("decode", **kw)))


def test_event_order_time_then_priority_then_fifo() -> None:
    sim, seen = Simulator(), []
    for name, t, kind in [("arr", 1.0, EventKind.ARRIVAL), ("step", 1.0, EventKind.STEP_END),
                          ("early", 0.5, EventKind.WAKEUP), ("arr2", 1.0, EventKind.ARRIVAL),
                          ("xfer", 1.0, EventKind.TRANSFER_END)]:
        sim.schedule(t, kind, seen.append, name)
    assert sim.run() == 1.0
    assert seen == ["early", "step", "xfer", "arr", "arr2"]


def test_disaggregated_exact_timestamps(toy) -> None:
    wl = fixed_workload([100, 100], [3, 2], [0.0, 0.005])
    res = simulate(_disagg(), toy, wl, 1.0)
    r0, r1 = res.requests
    # prefill 10 + 0.1*100 = 20 ms; KV 100 tok * 1000 B at 1 GB/s = 0.1 ms; decode 5 + 1*B ms
    assert r0.first_token == A(0.020, abs=1e-12)
    assert r0.token_timestamps() == A([0.020, 0.0261, 0.0321], abs=1e-12)
    assert r1.token_timestamps() == A([0.040, 0.0461], abs=1e-12)
    ttft, tpot = res.ttft_tpot()
    assert ttft == A([0.020, 0.035], abs=1e-12)
    assert tpot == A([0.00605, 0.0061], abs=1e-12)
    kinds = [e for e, _ in r0.log]
    assert kinds == [E.ARRIVAL, E.PREFILL_BEGIN, E.PREFILL_END, E.MIGRATION_BEGIN,
                     E.MIGRATION_END, E.DECODE_BEGIN, E.DECODE_END]
    assert dict(r1.log)[E.PREFILL_BEGIN] == A(0.020)  # waited for the busy prefill instance


@pytest.mark.parametrize("out0, r1_tokens", [
    (6, [0.04, 0.0561, 0.0621]),  # lands at 0.0401 in r0's step 0.0381-0.0441: joins at 0.0501
    (5, [0.04, 0.0501, 0.0561]),  # r0's step 0.0381-0.0441 is its last: nothing was submitted
])
def test_async_lag_joins_a_landed_request_one_iteration_later(toy, out0: int,
                                                              r1_tokens: list) -> None:
    """With async scheduling the decode iteration after the running one is already submitted
    when r1's KV lands, so r1 joins the one after that; without the lag it joins the next."""
    wl = fixed_workload([100, 100], [out0, 3], [0.0, 0.005])
    lag = simulate(ClusterSpec("toy", _disagg().instances, SchedulerSpec(async_lag=True)), toy,
                   wl, 1.0)
    base = simulate(_disagg(), toy, wl, 1.0)
    assert lag.requests[1].token_timestamps() == A(r1_tokens, abs=1e-9)
    assert base.requests[1].token_timestamps()[1] == A(0.0441 + (0.007 if out0 == 6 else 0.006))
    # r0 is not delayed by r1 waiting (one decode step of batch 1 is 6 ms)
    assert lag.requests[0].token_timestamps()[-1] == A(0.0201 + 0.006 * (out0 - 1), abs=1e-9)


def test_colocated_prefill_priority_exact(toy) -> None:
    wl = fixed_workload([100, 100], [3, 2], [0.0, 0.005])
    res = simulate(ClusterSpec("toy", (InstanceSpec("colocated"),)), toy, wl, 1.0)
    r0, r1 = res.requests
    # r1's prefill (20 ms) runs before r0's first decode step: decoding stalls
    assert r0.token_timestamps() == A([0.020, 0.047, 0.053], abs=1e-12)
    assert r1.token_timestamps() == A([0.040, 0.047], abs=1e-12)


def test_colocated_async_lag_exact(toy) -> None:
    """With async scheduling the step after the running one is composed while it runs: r1
    (arriving at 25 ms, in r0's first decode step, with the lookahead decode already composed)
    prefills after that one, and r1, prefilled while r0's next decode was already composed,
    joins the decode after it."""
    wl = fixed_workload([100, 100], [6, 3], [0.0, 0.025])
    spec = ClusterSpec("toy", (InstanceSpec("colocated"),), SchedulerSpec(async_lag=True))
    res = simulate(spec, toy, wl, 1.0)
    r0, r1 = res.requests
    # r0: prefill 0-20, decode 20-26, 26-32; r1 prefill 32-52; r0 alone 52-58; both 58-65, 65-72
    assert r0.token_timestamps() == A([0.020, 0.026, 0.032, 0.058, 0.065, 0.072], abs=1e-12)
    assert r1.token_timestamps() == A([0.052, 0.065, 0.072], abs=1e-12)
    # without the lag r1 prefills as soon as r0's running step ends, and joins right after
    base = simulate(ClusterSpec("toy", (InstanceSpec("colocated"),)), toy, wl, 1.0)
    assert base.requests[1].token_timestamps() == A([0.046, 0.053, 0.060], abs=1e-12)
    inst = res.cluster.colocated[0]
    assert (inst.queued, inst.ready, inst.reserved, inst.busy) == (None, [], 0, False)


def test_colocated_async_lag_composes_at_each_return(toy) -> None:
    """r1 arrives in r0's prefill with nothing composed after it: its prefill is composed at
    once and runs next (20-40). r0's decode was composed when r0's prefill came back, before r1's
    did: r0 decodes alone (40-46), and r1 after it (46-52); a request's last token is never
    looked past, so nothing of r0 rides along."""
    wl = fixed_workload([100, 100], [2, 2], [0.0, 0.005])
    spec = ClusterSpec("toy", (InstanceSpec("colocated"),), SchedulerSpec(async_lag=True))
    r0, r1 = simulate(spec, toy, wl, 1.0).requests
    assert r0.token_timestamps() == A([0.020, 0.046], abs=1e-12)
    assert r1.token_timestamps() == A([0.040, 0.052], abs=1e-12)
    assert dict(r1.log)[E.PREFILL_BEGIN] == A(0.005)  # composed (scheduled) at arrival


def test_colocated_chunked_prefill_exact(toy) -> None:
    wl = fixed_workload([100, 100], [3, 2], [0.0, 0.005])
    spec = ClusterSpec("toy", (InstanceSpec("colocated"),), SchedulerSpec(chunk_tokens=64))
    r0, r1 = simulate(spec, toy, wl, 1.0).requests
    # chunks: [r0:64] 16.4 ms, [r0:36 r1:28] 16.4 ms, [dec r0 + r1:63] 6 + 6.3 ms,
    # [dec r0 + r1:9] 6 + 0.9 ms, [dec r1] 6 ms
    assert r0.token_timestamps() == A([0.0328, 0.0451, 0.0520], abs=1e-12)
    assert r1.token_timestamps() == A([0.0520, 0.0580], abs=1e-12)


def test_kv_transfer_contention_fifo(toy) -> None:
    # r1 and r2 queue behind r0's prefill and then share one 200-token batch (30 ms)
    wl = fixed_workload([100, 100, 100], [2, 2, 2], [0.0, 0.001, 0.001])
    _, r1, r2 = simulate(_disagg(), toy, wl, 1.0).requests
    end1, end2 = dict(r1.log)[E.MIGRATION_END], dict(r2.log)[E.MIGRATION_END]
    assert dict(r1.log)[E.PREFILL_END] == dict(r2.log)[E.PREFILL_END] == A(0.050)
    assert (end1, end2) == (A(0.0501), A(0.0502))  # second transfer queues behind the first


@pytest.mark.parametrize("kw,seconds", [({"node": 1}, 1e-3), ({}, 1e-4),
                                        ({"gpus": (0,)}, 100_000 / 2000e9)])
def test_link_kinds(toy, kw: dict, seconds: float) -> None:
    wl = fixed_workload([100], [2], [0.0])
    spec = ClusterSpec("toy", (InstanceSpec("prefill", gpus=(0,) if "gpus" in kw else None),
                               InstanceSpec("decode", **kw)))
    (r,) = simulate(spec, toy, wl, 1.0).requests
    log = dict(r.log)
    assert log[E.MIGRATION_END] - log[E.MIGRATION_BEGIN] == A(seconds, rel=1e-9)


def test_decode_preemption_recomputes_and_finishes() -> None:
    prof = toy_profile(capacity=250)
    wl = fixed_workload([100, 100], [40, 40], [0.0, 0.0])
    res = simulate(_disagg(), prof, wl, 1.0)
    r0, r1 = res.requests
    assert sum(1 for e, _ in r1.log if e is E.DECODE_BEGIN) == 2  # evicted once (LIFO victim)
    for r in res.requests:
        ts = r.token_timestamps()
        assert len(ts) == r.output_len and ts == sorted(ts) and r.error is None
    assert r1.last_token > r0.last_token


def test_prefill_back_pressure_waits_for_migration() -> None:
    # prefill instance holds 150 tokens: r1 cannot start until r0's KV has left
    prof = toy_profile(capacity=150)
    wl = fixed_workload([100, 100], [2, 2], [0.0, 0.001])
    r0, r1 = simulate(_disagg(node=1), prof, wl, 1.0).requests
    assert dict(r1.log)[E.PREFILL_BEGIN] == A(dict(r0.log)[E.MIGRATION_END])


def test_too_long_request_fails_cleanly() -> None:
    prof = toy_profile(capacity=50)
    wl = fixed_workload([100, 10], [2, 2], [0.0, 0.0])
    res = simulate(_disagg(), prof, wl, 1.0)
    assert res.requests[0].error is not None and res.requests[1].error is None
    assert res.attainment(None, None) == 0.5


def test_decode_only_and_prefill_only_runs(toy) -> None:
    wl = fixed_workload([100, 100], [3, 3], [0.0, 0.0])
    dec = simulate(ClusterSpec("toy", (InstanceSpec("decode"),)), toy, wl, 1.0)
    # r0 starts alone (6 ms), r1 joins at the next iteration (7 ms), then r1 alone (6 ms)
    assert dec.ttft_tpot() == ([0.0, 0.0], [A(0.0065), A(0.0095)])
    pre = simulate(ClusterSpec("toy", (InstanceSpec("prefill"),)), toy, wl, 1.0)
    assert pre.ttft_tpot()[0] == [A(0.020), A(0.040)]
    one = fixed_workload([100, 100], [1, 2], [0.0, 0.0])  # single-token outputs finish at once
    for role in ("decode", "prefill", "colocated"):
        res = simulate(ClusterSpec("toy", (InstanceSpec(role),)), toy, one, 1.0)
        assert all(r.last_token >= 0 and r.error is None for r in res.requests), role
    res = simulate(_disagg(), toy, one, 1.0)
    assert [len(r.token_timestamps()) for r in res.requests] == [1, 2]


def test_pipeline_prefill_overlaps_batches() -> None:
    prof = toy_profile(prefill={1: [10.0, 0.1, 0.0]})
    wl = fixed_workload([100, 100], [1, 1], [0.0, 0.001])
    spec = ClusterSpec("toy", (InstanceSpec("prefill", pp=2),),
                       SchedulerSpec(max_prefill_tokens=100))
    r0, r1 = simulate(spec, prof, wl, 1.0).requests
    # stage = 20 ms / 2; r1 enters stage 1 when r0 moves to stage 2
    assert (r0.first_token, r1.first_token) == (A(0.020), A(0.030))


def test_least_loaded_routing_spreads_requests(toy) -> None:
    wl = fixed_workload([100, 100, 100], [5, 5, 5], [0.0, 0.001, 0.002])
    spec = ClusterSpec("toy", (InstanceSpec("prefill"), InstanceSpec("prefill"),
                               InstanceSpec("decode"), InstanceSpec("decode")))
    r0, r1, r2 = simulate(spec, toy, wl, 1.0).requests
    # r1 goes to the idle second prefill instance: both first tokens 20 ms after arrival
    assert (r0.first_token, r1.first_token) == (A(0.020), A(0.021))
    assert r2.first_token == A(0.040)  # both busy: the one freeing first (index 0) wins
    assert r0.segments[0][0] is not r1.segments[0][0]  # different decode instances
