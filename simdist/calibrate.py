"""Closing the loop with a real run: lifecycle terms of a run (queueing, prefill, transfer,
decode) and `calibrate()`, which scales a profile's terms so the simulation of a measured trace
matches what the real server spent in each (what step-level profiling does not see). Used by
evaluation/validate_simulator.py and `distllm demo`.

With a measured `host` section (simdist.host) the simulated steps already stretch with the
host's load, so the factors only take up what is left (per-step serving overhead of the engine
loop); the host section itself is measured and never scaled. Without one, a single factor per
term fitted at one rate has to stand in for a contention that grows with the rate.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

from distllm.metrics import RequestRecord
from distllm.request import Lifetime
from simdist.cluster import ClusterSpec, InstanceSpec, SchedulerSpec, simulate
from simdist.profile import LatencyProfile
from simdist.results import SimResult
from simdist.workload import Workload

TERMS = ("queueing", "prefill", "transfer", "decode")


def request_terms(rec: RequestRecord, life: Lifetime) -> dict[str, float] | None:
    """Seconds one finished request spent in each term (None if it did not finish): queueing
    (arrival -> prefill begin, plus the wait for a decode slot), prefill, transfer
    (migration), decode (per output token)."""
    ev = {e.value: t for e, t in life.events}
    if not rec.ok or not {"arrival", "prefill_begin", "prefill_end"} <= ev.keys():
        return None
    out = {"queueing": ev["prefill_begin"] - ev["arrival"],
           "prefill": ev["prefill_end"] - ev["prefill_begin"], "transfer": 0.0, "decode": 0.0}
    if "migration_end" in ev and "migration_begin" in ev:
        out["transfer"] = ev["migration_end"] - ev["migration_begin"]
        out["queueing"] += max(0.0, ev["migration_begin"] - ev["prefill_end"])
    if "decode_end" in ev and "decode_begin" in ev and rec.output_len > 1:
        out["decode"] = (ev["decode_end"] - ev["decode_begin"]) / (rec.output_len - 1)
    return out


def lifecycle_terms(records: Sequence[RequestRecord],
                    lifetimes: Sequence[Lifetime]) -> dict[str, float]:
    """Mean ms per finished request of each term (see `request_terms`)."""
    per = [t for t in map(request_terms, records, lifetimes) if t is not None]
    return {k: 1e3 * sum(t[k] for t in per) / max(len(per), 1) for k in TERMS}


def replay_trace(trace: Sequence[dict], roles: Sequence[str], profile: LatencyProfile,
                 model_name: str, sched: SchedulerSpec | None = None) -> SimResult:
    """A trace (rows with prompt_len, output_len, arrival_s) replayed on one tp1 instance per
    role, each on its own device."""
    spec = ClusterSpec(model_name, tuple(InstanceSpec(r, node=0, gpus=(i,))
                                         for i, r in enumerate(roles)),
                       sched or SchedulerSpec())
    wl = Workload(tuple(r["prompt_len"] for r in trace), tuple(r["output_len"] for r in trace),
                  (1.0,) * len(trace), tuple(r["arrival_s"] for r in trace), arrival="trace")
    return simulate(spec, profile, wl, None)


def simulate_trace(trace: Sequence[dict], roles: Sequence[str], profile: LatencyProfile,
                   model_name: str, sched: SchedulerSpec | None = None) -> dict:
    """`.exp` dict of `replay_trace`."""
    return replay_trace(trace, roles, profile, model_name, sched).to_exp(
        {"backend": "simdist", "instances": list(roles)})


def with_host(profile: LatencyProfile, host: dict | None) -> LatencyProfile:
    """The profile with its `host` section replaced (None or {}: removed)."""
    d = profile.to_dict()
    d.pop("host", None)
    if host:
        d["host"] = host
    return LatencyProfile.from_dict(d, source=profile.source)


def exp_request_terms(exp: dict) -> list[dict[str, float] | None]:
    """request_terms of every request of a `.exp` dict (ours or simdist's), in its order."""
    out = []
    for q in exp["requests"]:
        rec = RequestRecord(q["prompt_len"], q["output_len"], q["start_time"], q["end_time"],
                            q.get("token_timestamps") or [], q.get("error"))
        out.append(request_terms(rec, Lifetime.from_json(q.get("lifecycle_events") or [])))
    return out


def exp_terms(exp: dict) -> dict[str, float]:
    """Mean ms per finished request of each term of a `.exp` dict."""
    per = [t for t in exp_request_terms(exp) if t is not None]
    return {k: 1e3 * sum(t[k] for t in per) / max(len(per), 1) for k in TERMS}


def median_ratios(real: Sequence[dict | None], sim: Sequence[dict | None]) -> dict[str, float]:
    """Per term, the median over requests of real / simulated time (robust to the spikes a
    shared host puts into a few requests); 1.0 where a term is absent."""
    out = {}
    for k in ("prefill", "decode", "transfer"):
        ratios = sorted(r[k] / s[k] for r, s in zip(real, sim, strict=True)
                        if r is not None and s is not None and r[k] > 0 and s[k] > 0)
        out[k] = ratios[len(ratios) // 2] if ratios else 1.0
    return out


def _scaled(d: dict, model_name: str, step: dict[str, float]) -> dict:
    d = copy.deepcopy(d)
    for entry in d["models"][model_name]["tp"].values():
        entry["prefill"] = [x * step["prefill"] for x in entry["prefill"]]
        for key in ("decode_small", "decode_large"):
            entry[key] = [x * step["decode"] for x in entry[key]]
    d["overhead"]["transfer_ms"] = d["overhead"].get("transfer_ms", 0.0) * step["transfer"]
    d["interconnect"] = {k: v / step["transfer"] for k, v in d["interconnect"].items()}
    return d


def calibrate(profile: LatencyProfile, model_name: str, trace: Sequence[dict],
              roles: Sequence[str], real: Sequence[dict | None],
              sched: SchedulerSpec | None = None, rounds: int = 3) -> dict:
    """Profile dict whose prefill, decode and transfer terms are scaled until the simulated
    trace spends per request (median ratio) what the real run did (`real`: request_terms of
    the same trace, in order); fixed point, as scaling changes the batching. The factors are
    recorded under "calibration"."""
    d = profile.to_dict()
    factors = {"prefill": 1.0, "decode": 1.0, "transfer": 1.0}
    for _ in range(rounds):
        prof = LatencyProfile.from_dict(d, source=profile.source)
        sim = exp_request_terms(simulate_trace(trace, roles, prof, model_name, sched))
        step = median_ratios(real, sim)
        d = _scaled(d, model_name, step)
        factors = {k: factors[k] * step[k] for k in factors}
    d["calibration"] = {"roles": list(roles), "factors": factors, "num_requests": len(trace)}
    d["source"] = f"{profile.source} (calibrated)"
    return d
