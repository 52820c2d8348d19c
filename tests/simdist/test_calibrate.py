"""simdist.calibrate: the decode fit (scale * step + fixed per-step cost) on synthetic data,
calibration pooled over several rounds, and the profile's decode-only fixed term."""
from __future__ import annotations

import numpy as np
import pytest

from simdist.calibrate import _scaled, calibrate, decode_fit, exp_request_terms, simulate_trace
from simdist.profile import LatencyProfile
from tests.simdist.conftest import plain_demo_profile

MODEL = "distllm-demo"
ROLES = ("prefill", "decode")
ROWS = [{"prompt": f"p{i}", "prompt_len": 20 + 7 * i, "output_len": 12 + i % 9}
        for i in range(30)]


def _trace(rate: float, seed: int, n: int = 30) -> list[dict]:
    from evaluation.validate_simulator import make_trace

    return make_trace(ROWS, n, rate, seed, "poisson", 1.0)


def _truth(prof: LatencyProfile, step: dict, decode_step_ms: float) -> LatencyProfile:
    return LatencyProfile.from_dict(_scaled(prof.to_dict(), MODEL, step, decode_step_ms))


def test_decode_fit_recovers_scale_and_fixed_step_across_two_regimes() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(6, 8, 60), rng.uniform(10, 13, 60)])  # two batch regimes
    y = 1.1 * x + 2.5 + rng.normal(0, 0.3, len(x))
    fit = decode_fit(y, x, groups=[0] * 60 + [1] * 60)
    assert fit["identified"] and fit["note"] == "fit"
    assert fit["scale"] == pytest.approx(1.1, abs=0.08)
    assert fit["step_ms"] == pytest.approx(2.5, abs=0.6)
    assert 0 < fit["residual_ms"] < 0.5 and fit["num_requests"] == 120


def test_decode_fit_falls_back_to_a_scale_without_two_regimes_or_with_a_bad_fit() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(6, 8, 60)
    one = decode_fit(1.3 * x + 2.0, x)  # one round: the fixed term is not identifiable
    assert not one["identified"] and one["step_ms"] == 0.0
    assert one["scale"] == pytest.approx(np.median((1.3 * x + 2.0) / x))
    assert "one batch regime" in one["note"]
    x2 = np.concatenate([x, x + 4])
    neg = decode_fit(2.0 * x2 - 5.0, x2, groups=[0] * 60 + [1] * 60)  # intercept < 0
    assert not neg["identified"] and neg["step_ms"] == 0.0 and "rejected" in neg["note"]
    flat = decode_fit(0.2 * x2 + 8.0, x2, groups=[0] * 60 + [1] * 60)  # scale < MIN_SCALE
    assert not flat["identified"] and flat["step_ms"] == 0.0
    assert decode_fit([], [])["num_requests"] == 0


def test_decode_fit_may_cut_into_the_profiled_fixed_step_down_to_a_floor() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(6, 8, 60), rng.uniform(10, 13, 60)])
    groups = [0] * 60 + [1] * 60
    cut = decode_fit(1.3 * x - 1.5, x, groups=groups, fixed_ms=3.0, keep_fixed=0.25)
    assert cut["identified"] and cut["note"] == "fit"  # floor: -0.75 * 1.3 * 3 = -2.9 ms
    assert cut["scale"] == pytest.approx(1.3, abs=0.01)
    assert cut["step_ms"] == pytest.approx(-1.5, abs=0.1)
    deep = decode_fit(1.3 * x - 4.0, x, groups=groups, fixed_ms=3.0, keep_fixed=0.25)
    assert not deep["identified"] and deep["step_ms"] == 0.0
    assert "< -2.92" in deep["note"]
    assert not decode_fit(1.3 * x - 1.5, x, groups=groups)["identified"]  # no fixed part given


def test_calibration_recovers_a_smaller_fixed_step_than_profiled() -> None:
    """'Real' decode steps at 1.2 x the profiled step minus 1 ms per step (the profiled step's
    fixed part includes per-step engine cost the served steps overlap): the calibration finds
    the negative fixed term instead of rejecting it."""
    prof = plain_demo_profile()
    assert prof.stage_cost(MODEL, 1).sa * 1e3 > 1.0 / 1.2 / 0.75  # inside the floor
    truth = _truth(prof, {"prefill": 1.0, "decode": 1.2, "transfer": 1.0}, -1.0)
    samples = []
    for rate, seed in ((1.0, 0), (12.0, 1)):
        trace = _trace(rate, seed)
        samples.append((trace, exp_request_terms(simulate_trace(trace, ROLES, truth, MODEL))))
    cal = calibrate(prof, MODEL, samples, ROLES)["calibration"]
    assert cal["decode_fit"]["identified"], cal["decode_fit"]["note"]
    assert cal["factors"]["decode"] == pytest.approx(1.2, rel=0.08)
    assert cal["decode_step_ms"] == pytest.approx(-1.0, abs=0.6)


def test_calibration_recovers_scale_and_fixed_step_from_two_rates() -> None:
    """'Real' rounds at a low and a high rate are simulated with decode = 1.15 x the profiled
    step + 3 ms per step (and slower prefill / transfers); calibrating the original profile
    on both rounds pooled finds those figures and reproduces the rounds' decode times. NOTE:
    scale and step trade off along a flat valley (the fixed point stops within 0.5 % of the
    rounds' decode times at scale 1.10-1.22, step 2.5-3.3 ms), hence the tolerances."""
    prof = plain_demo_profile()
    truth_step = {"prefill": 1.3, "decode": 1.15, "transfer": 1.5}
    truth = _truth(prof, truth_step, 3.0)
    samples = []
    for rate, seed in ((1.0, 0), (12.0, 1)):
        trace = _trace(rate, seed)
        samples.append((trace, exp_request_terms(simulate_trace(trace, ROLES, truth, MODEL))))
    d = calibrate(prof, MODEL, samples, ROLES)
    cal = d["calibration"]
    assert cal["decode_fit"]["identified"] and cal["rounds_used"] == 2
    assert cal["factors"]["decode"] == pytest.approx(1.15, rel=0.08)
    assert cal["decode_step_ms"] == pytest.approx(3.0, abs=0.6)
    assert cal["decode_fit"]["residual_rel"] < 0.01
    assert d["overhead"]["decode_step_ms"] == cal["decode_step_ms"]
    assert cal["factors"]["prefill"] == pytest.approx(1.3, rel=0.03)
    assert cal["factors"]["transfer"] == pytest.approx(1.5, rel=0.03)
    got = LatencyProfile.from_dict(d)
    for trace, real in samples:
        sim = exp_request_terms(simulate_trace(trace, ROLES, got, MODEL))
        ratio = np.median([s["decode"] / r["decode"] for s, r in zip(sim, real, strict=True)
                           if r and r["decode"] > 0])
        assert ratio == pytest.approx(1.0, abs=0.03)


def test_decode_sweep_identifies_the_fixed_step_one_rate_cannot() -> None:
    """Rounds at one rate cannot tell the fixed per-step cost from a scale (one batch regime);
    a decode sweep (b = 1..16 requests sent at once) of the same 'real' server can: with it the
    fit finds decode = 1.15 x the profiled step + 3 ms, and the rounds still set prefill."""
    prof = plain_demo_profile()
    truth = _truth(prof, {"prefill": 1.3, "decode": 1.15, "transfer": 1.0}, 3.0)
    trace = _trace(3.0, 0)
    samples = [(trace, exp_request_terms(simulate_trace(trace, ROLES, truth, MODEL)))]
    sweep = []
    for b in (1, 2, 4, 8, 16):
        t = [{**ROWS[10], "output_len": 40, "arrival_s": 0.0} for _ in range(b)]
        sweep.append((t, exp_request_terms(simulate_trace(t, ROLES, truth, MODEL))))
    rounds_only = calibrate(prof, MODEL, samples, ROLES)["calibration"]
    assert not rounds_only["decode_fit"]["identified"]
    assert rounds_only["decode_fit"]["source"] == "rounds"
    cal = calibrate(prof, MODEL, samples, ROLES, decode_samples=sweep)["calibration"]
    assert cal["decode_fit"]["identified"] and cal["decode_fit"]["source"] == "decode sweep"
    assert cal["factors"]["decode"] == pytest.approx(1.15, rel=0.08)
    assert cal["decode_step_ms"] == pytest.approx(3.0, abs=0.6)
    assert cal["factors"]["prefill"] == pytest.approx(1.3, rel=0.03)
    assert cal["num_requests"] == 30  # the sweep is not pooled into the rounds' terms


def test_calibration_pools_the_rounds_requests() -> None:
    """A round as if 1.2x slower prefill and one 1.6x slower at the same rate: pooled, the
    factor lies between them; each alone gives its own; one rate: no fixed step."""
    prof = plain_demo_profile()
    samples = []
    for seed, factor in ((0, 1.2), (1, 1.6)):
        trace = _trace(3.0, seed)
        truth = _truth(prof, {"prefill": factor, "decode": 1.0, "transfer": 1.0}, None)
        samples.append((trace, exp_request_terms(simulate_trace(trace, ROLES, truth, MODEL))))
    alone = [calibrate(prof, MODEL, [s], ROLES)["calibration"] for s in samples]
    assert alone[0]["factors"]["prefill"] == pytest.approx(1.2, rel=0.03)
    assert alone[1]["factors"]["prefill"] == pytest.approx(1.6, rel=0.03)
    pooled = calibrate(prof, MODEL, samples, ROLES)["calibration"]
    assert 1.25 < pooled["factors"]["prefill"] < 1.55
    assert pooled["num_requests"] == 60 and pooled["rounds_used"] == 2
    assert not pooled["decode_fit"]["identified"] and pooled["decode_step_ms"] == 0.0
    with pytest.raises(ValueError, match="requests in its trace"):
        calibrate(prof, MODEL, [(samples[0][0], samples[0][1][:-1])], ROLES)


def test_decode_step_ms_is_decode_only_and_absent_is_bit_identical() -> None:
    prof = plain_demo_profile()
    assert "decode_step_ms" not in prof.overhead
    zero = LatencyProfile.from_dict(_scaled(prof.to_dict(), MODEL, dict.fromkeys(
        ("prefill", "decode", "transfer"), 1.0), 0.0))
    trace = _trace(6.0, 2)
    assert simulate_trace(trace, ROLES, zero, MODEL) == simulate_trace(trace, ROLES, prof, MODEL)
    two = LatencyProfile.from_dict({**prof.to_dict(),
                                    "overhead": {**prof.overhead, "decode_step_ms": 2.0}})
    base, cost = prof.stage_cost(MODEL, 1), two.stage_cost(MODEL, 1)
    assert cost.decode(4, 400) == pytest.approx(base.decode(4, 400) + 2e-3, abs=1e-12)
    assert cost.prefill_stage(100, 10_000) == base.prefill_stage(100, 10_000)
    assert cost.prefill_extra(10, 100) == base.prefill_extra(10, 100)


def _contention_rounds(roles: tuple[str, ...], rates: tuple[float, float]
                       ) -> tuple[LatencyProfile, list[tuple], list[tuple]]:
    """A contention-free profile with a host section, and rounds at `rates` simulated with
    contention_prefill 0.3 / contention_decode 0.2 ('real') and without."""
    from simdist.calibrate import with_host

    host = {"cores": 2, "frontend_cpu_ms_per_step": 1.0}
    prof = with_host(plain_demo_profile(), host)
    truth = with_host(prof, {**host, "contention_prefill": 0.3, "contention_decode": 0.2})
    traces = [_trace(rate, seed, 40) for seed, rate in enumerate(rates)]
    return (prof, [(t, simulate_trace(t, roles, truth, MODEL)) for t in traces],
            [(t, simulate_trace(t, roles, prof, MODEL)) for t in traces])


def test_fit_contention_recovers_the_coefficients_of_simulated_rounds() -> None:
    """'Real' rounds simulated with contention_prefill 0.3 and contention_decode 0.2 on a host
    section: fitting the contention-free profile to their contrasts finds both on the grid;
    rounds simulated without contention give 0."""
    from simdist.calibrate import fit_contention

    prof, rounds, plain = _contention_rounds(ROLES, (3.0, 6.0))
    fit = fit_contention(prof, MODEL, rounds, ROLES)
    assert fit["contention_prefill"] == pytest.approx(0.3, abs=0.051)
    assert fit["contention_decode"] == pytest.approx(0.2, abs=0.051)
    assert fit["real_log_contrast"]["prefill"] > fit["sim_log_contrast_without"]["prefill"]
    none = fit_contention(prof, MODEL, plain, ROLES)
    assert none["contention_prefill"] == 0.0 and none["contention_decode"] == 0.0
    with pytest.raises(ValueError, match="host section"):
        fit_contention(LatencyProfile.from_dict(
            {k: v for k, v in prof.to_dict().items() if k != "host"}), MODEL, rounds, ROLES)


@pytest.mark.parametrize("roles", [ROLES, ("colocated", "colocated")])
def test_fit_contention_quantiles_recovers_the_coefficients_of_simulated_rounds(
        roles: tuple[str, str]) -> None:
    """'Real' rounds simulated with contention 0.3 (prefill) and 0.2 (decode): the quantile
    fit of the contention-free profile lands on that grid point (its loss 0; colocated rounds
    too, which the contrast fit cannot use); rounds without contention give (0, 0)."""
    from simdist.calibrate import exp_records, fit_contention_quantiles, latency_quantiles

    prof, rounds, plain = _contention_rounds(roles, (6.0, 12.0))
    fit = fit_contention_quantiles(prof, MODEL, rounds, roles)
    assert (fit["contention_prefill"], fit["contention_decode"]) == (0.3, 0.2)
    assert fit["loss"] < 1e-9 < fit["loss_without"]
    assert fit["real_quantiles_ms"][0] == latency_quantiles(exp_records(rounds[0][1]))
    none = fit_contention_quantiles(prof, MODEL, plain, roles)
    assert (none["contention_prefill"], none["contention_decode"]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="host section"):
        fit_contention_quantiles(LatencyProfile.from_dict(
            {k: v for k, v in prof.to_dict().items() if k != "host"}), MODEL, rounds, roles)


def test_replay_pair_stats() -> None:
    from distllm.metrics import RequestRecord
    from simdist.calibrate import replay_pair_stats

    def rec(tpot_ms: float) -> RequestRecord:  # 3 tokens, tpot_ms apart
        return RequestRecord(10, 3, 0.0, 1.0, [0.1, 0.1 + tpot_ms / 1e3, 0.1 + tpot_ms / 5e2])

    from scipy.stats import spearmanr

    a = [rec(4.0) for _ in range(8)]
    same = replay_pair_stats(a, a)
    assert same["sd"] == 0.0 and same["rho"] == 0.0 and same["n"] == 8
    # b slower by 20 % on requests 4..7: d = -log 1.2 there, 0 before; neighbours agree
    b = [rec(4.8 if k >= 4 else 4.0) for k in range(8)]
    st = replay_pair_stats(a, b)
    step = [0, 0, 0, 0, 1, 1, 1, 1]
    assert st["n"] == 8 and st["rho"] == pytest.approx(spearmanr(step[:-1], step[1:]).statistic)
    assert st["rho"] > 0.4
    assert st["sd"] == pytest.approx(1.4826 * np.log(1.2) / 2 / np.sqrt(2), rel=1e-6)
    with pytest.raises(ValueError, match="length"):
        replay_pair_stats(a, b[:3])


def test_fit_jitter_recovers_the_jitter_of_simulated_replays() -> None:
    """Two 'real' replays of one trace simulated with jitter sd 0.2 (seeds 101, 102): the fit
    of the jitter-free profile lands near it; two identical replays give no jitter."""
    from simdist.calibrate import fit_jitter, with_host

    host = {"cores": 2, "frontend_cpu_ms_per_step": 1.0}
    prof = with_host(plain_demo_profile(), host)
    trace = _trace(8.0, 0, 80)

    def replay(seed: float) -> dict:
        h = {**host, "jitter_sd": 0.2, "jitter_ms": 300.0, "jitter_seed": seed}
        return simulate_trace(trace, ROLES, with_host(prof, h), MODEL)

    fit = fit_jitter(prof, MODEL, trace, replay(101.0), replay(102.0), ROLES)
    assert fit["jitter_sd"] == pytest.approx(0.2, abs=0.101)
    assert fit["real"]["sd"] > 0.05 and fit["real"]["rho"] > 0.1
    assert fit["sim"]["sd"] == pytest.approx(fit["real"]["sd"], rel=0.35)
    plain = simulate_trace(trace, ROLES, prof, MODEL)
    none = fit_jitter(prof, MODEL, trace, plain, plain, ROLES)
    assert none["jitter_sd"] == 0.0 and "no jitter" in none["note"]


def _exp(lives: list[dict[str, float]]) -> dict:
    """An .exp dict of requests with these lifecycle events only."""
    return {"requests": [{"lifecycle_events": [{"event_type": k, "timestamp": t}
                                               for k, t in ev.items()]} for ev in lives]}


def test_transfer_contention_is_the_busy_over_idle_median_migration() -> None:
    """Migrations beginning while another request decodes (busy) take 9 ms, the others 6 ms:
    contention_transfer 0.5. A request's own decode (after its migration) does not count."""
    from simdist.calibrate import transfer_contention

    lives = []
    for k in range(6):  # idle: nothing else decoding
        t = 10.0 * k
        lives.append({"migration_begin": t, "migration_end": t + 0.006,
                      "decode_begin": t + 0.007, "decode_end": t + 0.5})
    for k in range(6):  # busy: each begins inside a long-decoding request's decode
        t = 100.0 + 10.0 * k
        lives.append({"decode_begin": t - 1.0, "decode_end": t + 1.0})
        lives.append({"migration_begin": t, "migration_end": t + 0.009})
    out = transfer_contention([_exp(lives)])
    assert out["busy"] == 6 and out["idle"] == 6
    assert out["idle_ms"] == pytest.approx(6.0) and out["busy_ms"] == pytest.approx(9.0)
    assert out["contention_transfer"] == pytest.approx(0.5)
    # too few migrations on one side: no measurement
    assert transfer_contention([_exp(lives[:6] + lives[6:14])]) is None
    # faster while busy (noise): clamped at 0
    fast = [{**ev, "migration_end": ev["migration_begin"] + 0.003} if "migration_begin" in ev
            and ev["migration_begin"] >= 100 else ev for ev in lives]
    assert transfer_contention([_exp(fast)])["contention_transfer"] == 0.0
