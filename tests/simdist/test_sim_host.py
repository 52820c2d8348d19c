"""Host CPU contention (simdist.host): absent or roomy host = the profiled run exactly; an
oversubscribed host stretches steps by demand / cores, more at higher rates; exact hand-computed
stretch; validation; profile JSON round trip."""
from __future__ import annotations

import pytest

from simdist.cluster import ClusterSpec, InstanceSpec, simulate
from simdist.host import HostModel, HostSpec
from simdist.profile import LatencyProfile, load_profile
from simdist.workload import make_workload

from .conftest import fixed_workload, toy_profile

A = pytest.approx
DISAGG = ClusterSpec("toy", (InstanceSpec("prefill", gpus=(0,)), InstanceSpec("decode",
                                                                              gpus=(1,))))


def _with_host(profile: LatencyProfile, host: dict) -> LatencyProfile:
    return LatencyProfile.from_dict({**profile.to_dict(), "host": host})


def _stamps(res) -> list:  # noqa: ANN001 - SimResult
    return [r.token_timestamps() for r in res.requests]


def test_absent_or_roomy_host_gives_the_profiled_run_exactly() -> None:
    prof = load_profile("cpu-demo")
    plain = LatencyProfile.from_dict({k: v for k, v in prof.to_dict().items() if k != "host"})
    wl = make_workload("sharegpt", 80, seed=1)
    spec = ClusterSpec("distllm-demo", (InstanceSpec("prefill", gpus=(0,)),
                                        InstanceSpec("decode", gpus=(1,))))
    base = simulate(spec, plain, wl, 8.0)
    roomy = simulate(spec, _with_host(plain, {"cores": 64, "frontend_cpu_ms_per_step": 2.0}),
                     wl, 8.0)
    assert _stamps(roomy) == _stamps(base)  # demand never exceeds 64 cores: bit-identical
    assert base.cluster.host is None and base.cluster.num_steps == roomy.cluster.num_steps > 0


def test_two_busy_workers_on_one_core_take_twice_as_long() -> None:
    """Toy: prefill of r1 (20 ms) overlaps r0's decode steps; with 1 core both stretch 2x."""
    toy = toy_profile()
    wl = fixed_workload([100, 100], [3, 2], [0.0, 0.005])
    base = simulate(DISAGG, toy, wl, 1.0)
    one = simulate(DISAGG, _with_host(toy, {"cores": 1}), wl, 1.0)
    r0 = one.requests[0]
    assert r0.first_token == base.requests[0].first_token == A(0.020)  # alone: no stretch
    # r1's prefill starts at 0.020 while r0's first decode step (6 ms) starts at 0.0201: the
    # prefill began alone (20 ms), the decode step sees 2 busy threads on 1 core: 12 ms
    assert r0.token_timestamps()[1] == A(0.0201 + 0.012, abs=1e-9)
    assert one.requests[1].first_token == A(0.040, abs=1e-9)


def test_frontend_load_stretches_more_at_higher_rates() -> None:
    toy = toy_profile()
    host = {"cores": 2, "frontend_cpu_ms_per_step": 3.0, "frontend_cpu_ms_per_token": 0.2}
    ratios = []
    for rate in (5.0, 40.0):
        wl = fixed_workload([200] * 60, [30] * 60, [i / rate for i in range(60)])
        base, hosted = (simulate(DISAGG, p, wl, 1.0) for p in (toy, _with_host(toy, host)))
        (_, tpot0), (_, tpot1) = base.ttft_tpot(), hosted.ttft_tpot()
        ratios.append(sum(tpot1) / sum(tpot0))
        again = simulate(DISAGG, _with_host(toy, host), wl, 1.0)
        assert _stamps(again) == _stamps(hosted)  # deterministic
    assert 1.0 <= ratios[0] < ratios[1]


def test_host_model_demand_and_window() -> None:
    host = HostModel(HostSpec(cores=2, frontend_cpu_ms_per_step=100.0, window_ms=1000.0))
    assert host.begin_step(0.0, 0.010) == 0.010  # 1 thread, no frontend yet
    assert host.begin_step(0.0, 0.010) == 0.010  # 2 threads on 2 cores
    host.end_step()
    host.on_step(0.5, 0)  # 100 ms CPU in the last second: 0.1 core
    assert host.frontend_cores(0.6) == A(0.1)
    assert host.begin_step(0.6, 0.010) == A(0.010 * 2.1 / 2)  # 2 threads + 0.1 core
    assert host.frontend_cores(1.6) == 0.0  # left the window
    host.end_step(2)
    assert host.busy == 0


@pytest.mark.parametrize("bad", [{"cores": 0}, {"cores": 2, "frontend_cpu_ms_per_step": -1},
                                 {"cores": 2, "window_ms": 0},
                                 {"cores": 2, "background_cores": -0.5},
                                 {"cores": 2, "contention_decode": -0.1},
                                 {"cores": 2, "contention_transfer": -0.1},
                                 {"cores": 2, "contention_migrate": -0.1}])
def test_host_spec_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        HostSpec.from_dict(bad)


def test_profile_round_trip_keeps_the_host_section_and_omits_an_empty_one() -> None:
    toy = toy_profile()
    assert "host" not in toy.to_dict()
    host = {"cores": 2, "frontend_cpu_ms_per_step": 1.5, "measured": {"wall_s": 3.0}}
    again = LatencyProfile.from_dict(_with_host(toy, host).to_dict())
    assert again.host == host
    assert HostSpec.from_dict(again.host) == HostSpec(cores=2, frontend_cpu_ms_per_step=1.5)
    assert HostSpec.from_dict({}) is None


def test_frontend_latency_adds_to_ttft_and_leaves_tpot() -> None:
    toy = toy_profile()
    wl = fixed_workload([100, 100], [3, 2], [0.0, 0.005])
    base = simulate(DISAGG, toy, wl, 1.0)
    late = simulate(DISAGG, _with_host(toy, {"cores": 64, "frontend_latency_ms": 4.0}), wl, 1.0)
    (ttft0, tpot0), (ttft1, tpot1) = base.ttft_tpot(), late.ttft_tpot()
    assert ttft1 == A([t + 0.004 for t in ttft0], abs=1e-12)
    assert tpot1 == A(tpot0, abs=1e-12)
    arrival = late.requests[1].log[0]
    assert arrival[1] == A(0.009) and late.requests[1].arrival == A(0.005)


def test_contention_stretches_a_step_by_its_coefficient_per_other_busy_worker() -> None:
    """Toy on 2 cores (no fair-share stretch): r0's first decode step (6 ms) starts at 0.0201
    while r1's prefill runs: 1 other busy worker, c_decode 0.5 -> 9 ms. r1's prefill started
    at 0.020 with the decode instance idle: c_prefill does not touch it."""
    toy = toy_profile()
    wl = fixed_workload([100, 100], [3, 2], [0.0, 0.005])
    host = {"cores": 2, "contention_prefill": 1.0, "contention_decode": 0.5}
    base = simulate(DISAGG, _with_host(toy, {"cores": 2}), wl, 1.0)
    hit = simulate(DISAGG, _with_host(toy, host), wl, 1.0)
    assert base.requests[0].token_timestamps()[1] == A(0.0201 + 0.006, abs=1e-9)
    assert hit.requests[0].token_timestamps()[1] == A(0.0201 + 0.009, abs=1e-9)
    assert hit.requests[1].first_token == base.requests[1].first_token == A(0.040, abs=1e-9)


def test_transfer_contention_stretches_a_migration_that_starts_while_decode_steps() -> None:
    """Toy: r0's migration starts at 0.020 with the decode instance idle (0.1 ms either way);
    r1's at 0.040, while r0 decodes: with contention_transfer 1.0 it takes 0.2 ms."""
    wl = fixed_workload([100, 100], [5, 2], [0.0, 0.005])

    def migrations(host: dict) -> list[tuple[float, float]]:
        res = simulate(DISAGG, _with_host(toy_profile(), host), wl, 1.0)
        return [(ev["migration_begin"], ev["migration_end"])
                for ev in ({e.value: t for e, t in r.lifetime().events} for r in res.requests)]

    base = migrations({"cores": 2})
    hit = migrations({"cores": 2, "contention_transfer": 1.0})
    assert base == [(A(0.020), A(0.0201)), (A(0.040), A(0.0401))]
    assert hit == [(A(0.020), A(0.0201)), (A(0.040), A(0.0402))]
    assert HostModel(HostSpec(cores=2, contention_transfer=0.7)).transfer_stretch(True) == 1.7
    assert HostModel(HostSpec(cores=2, contention_transfer=0.7)).transfer_stretch(False) == 1.0


def test_migrate_contention_stretches_a_decode_step_that_starts_while_kv_lands() -> None:
    """Toy: r1's 5000-token KV migrates 0.530-0.535 s while r0 decodes (6 ms steps from
    0.0201): the one step of r0 that starts inside that window takes (1 + 1.0) x 6 ms; no
    other gap changes."""
    wl = fixed_workload([100, 5000], [120, 2], [0.0, 0.005])

    def run(host: dict) -> tuple[list[float], tuple[float, float]]:
        r0, r1 = simulate(DISAGG, _with_host(toy_profile(), host), wl, 1.0).requests
        ev = {e.value: t for e, t in r1.lifetime().events}
        gaps = [b - a for a, b in zip(r0.token_timestamps(), r0.token_timestamps()[1:],
                                      strict=False)]
        return gaps, (ev["migration_begin"], ev["migration_end"])

    base, (mb, me) = run({"cores": 2})
    hit, window = run({"cores": 2, "contention_migrate": 1.0})
    assert (mb, me) == (A(0.530), A(0.535)) and window == (A(mb), A(me))
    stretched = [i for i, (a, b) in enumerate(zip(base, hit, strict=True)) if b != A(a)]
    assert len(stretched) >= 1 and hit[stretched[0]] == A(0.012)
    starts = [0.0201 + sum(hit[:i]) for i in stretched[:1]]
    assert mb <= starts[0] < me  # the step that began while the KV landed
    assert hit[:stretched[0]] == base[:stretched[0]]


def test_host_model_contention_counts_other_instances_threads_only() -> None:
    host = HostModel(HostSpec(cores=8, contention_prefill=0.3, contention_decode=0.5))
    assert host.begin_step(0.0, 0.010, 2, is_prefill=True) == 0.010  # alone (its 2 threads)
    assert host.begin_step(0.0, 0.010) == A(0.010 * (1 + 0.5 * 2))  # decode, 2 others busy
    assert host.begin_step(0.0, 0.010, 1, is_prefill=True) == A(0.010 * (1 + 0.3 * 3))
    host.end_step(4)
    crowded = HostModel(HostSpec(cores=1, contention_decode=0.5))
    crowded.begin_step(0.0, 0.010, is_prefill=True)
    assert crowded.begin_step(0.0, 0.010) == A(0.010 * 2 * 1.5)  # fair share, then contention


def test_zero_or_absent_contention_keys_give_the_same_run_bit_for_bit() -> None:
    prof = load_profile("cpu-demo")
    host = {k: v for k, v in prof.host.items() if not k.startswith("contention_")}
    wl = make_workload("sharegpt", 80, seed=1)
    spec = ClusterSpec("distllm-demo", (InstanceSpec("prefill", gpus=(0,)),
                                        InstanceSpec("decode", gpus=(1,))))
    absent = simulate(spec, _with_host(prof, host), wl, 8.0)
    zero = simulate(spec, _with_host(prof, {**host, "contention_prefill": 0.0,
                                            "contention_decode": 0.0,
                                            "contention_transfer": 0.0,
                                            "contention_migrate": 0.0}), wl, 8.0)
    assert _stamps(zero) == _stamps(absent)
    assert ([r.lifetime().events for r in zero.requests]
            == [r.lifetime().events for r in absent.requests])
    hit = simulate(spec, _with_host(prof, {**host, "contention_prefill": 0.5,
                                           "contention_decode": 0.5}), wl, 8.0)
    assert sum(hit.ttft_tpot()[1]) > sum(absent.ttft_tpot()[1])  # and the term does act


def test_jitter_off_gives_the_same_run_bit_for_bit_and_seeds_are_exact() -> None:
    prof = load_profile("cpu-demo")
    wl = make_workload("sharegpt", 80, seed=1)
    spec = ClusterSpec("distllm-demo", (InstanceSpec("prefill", gpus=(0,)),
                                        InstanceSpec("decode", gpus=(1,))))
    base = simulate(spec, prof, wl, 8.0)
    off = simulate(spec, _with_host(prof, {**prof.host, "jitter_sd": 0.0, "jitter_ms": 50.0,
                                           "jitter_seed": 3.0}), wl, 8.0)
    assert _stamps(off) == _stamps(base)

    def jittered(seed: float):  # noqa: ANN202
        return simulate(spec, _with_host(prof, {**prof.host, "jitter_sd": 0.3,
                                                "jitter_seed": seed}), wl, 8.0)

    one = jittered(1.0)
    assert _stamps(jittered(1.0)) == _stamps(one)  # seeded: exact
    assert _stamps(jittered(2.0)) != _stamps(one) != _stamps(base)


def test_host_jitter_is_a_stationary_ou_process_of_median_one() -> None:
    """exp(x): x stationary with sd `sd`; samples `tau` apart correlate by 1/e, samples 10 tau
    apart barely; at one instant every caller gets the same factor."""
    import numpy as np

    from simdist.host import HostJitter

    def series(dt: float, n: int = 4000) -> np.ndarray:
        j = HostJitter(0.25, 0.1, seed=7)
        return np.log([j.factor(k * dt) for k in range(n)])

    near, far = series(0.1), series(1.0)
    assert np.std(far) == pytest.approx(0.25, rel=0.1)
    assert abs(np.median(far)) < 0.03  # median factor 1
    assert np.corrcoef(near[:-1], near[1:])[0, 1] == pytest.approx(np.exp(-1), abs=0.05)
    assert abs(np.corrcoef(far[:-1], far[1:])[0, 1]) < 0.06
    j = HostJitter(0.25, 0.1, seed=7)
    assert j.factor(0.5) == j.factor(0.5) != j.factor(0.6)
    with pytest.raises(ValueError, match="jitter_ms"):
        HostSpec(cores=2, jitter_sd=0.2, jitter_ms=0.0)
    with pytest.raises(ValueError, match="jitter_sd"):
        HostSpec(cores=2, jitter_sd=-0.1)
