"""Closing the loop with a real run: lifecycle terms of a run (queueing, prefill, transfer,
decode) and `calibrate()`, which scales a profile's terms so the simulation of a measured trace
matches what the real server spent in each (the serving stack's share of a small CPU host, which
step-level profiling does not see). Used by evaluation/validate_simulator.py and `distllm demo`.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

from distllm.metrics import RequestRecord
from distllm.request import Lifetime
from simdist.cluster import ClusterSpec, InstanceSpec, SchedulerSpec, simulate
from simdist.profile import LatencyProfile
from simdist.workload import Workload

TERMS = ("queueing", "prefill", "transfer", "decode")


def lifecycle_terms(records: Sequence[RequestRecord],
                    lifetimes: Sequence[Lifetime]) -> dict[str, float]:
    """Mean ms per finished request of each term: queueing (arrival -> prefill begin, plus the
    wait for a decode slot), prefill, transfer (migration), decode (per output token)."""
    sums = dict.fromkeys(TERMS, 0.0)
    count = 0
    for rec, life in zip(records, lifetimes, strict=True):
        ev = {e.value: t for e, t in life.events}
        if not rec.ok or not {"arrival", "prefill_begin", "prefill_end"} <= ev.keys():
            continue
        count += 1
        sums["queueing"] += ev["prefill_begin"] - ev["arrival"]
        sums["prefill"] += ev["prefill_end"] - ev["prefill_begin"]
        if "migration_end" in ev and "migration_begin" in ev:
            sums["transfer"] += ev["migration_end"] - ev["migration_begin"]
            sums["queueing"] += max(0.0, ev["migration_begin"] - ev["prefill_end"])
        if "decode_end" in ev and "decode_begin" in ev and rec.output_len > 1:
            sums["decode"] += (ev["decode_end"] - ev["decode_begin"]) / (rec.output_len - 1)
    return {k: 1e3 * v / max(count, 1) for k, v in sums.items()}


def simulate_trace(trace: Sequence[dict], roles: Sequence[str], profile: LatencyProfile,
                   model_name: str, sched: SchedulerSpec | None = None) -> dict:
    """`.exp` dict of a trace (rows with prompt_len, output_len, arrival_s) replayed on one
    tp1 instance per role, each on its own device."""
    spec = ClusterSpec(model_name, tuple(InstanceSpec(r, node=0, gpus=(i,))
                                         for i, r in enumerate(roles)),
                       sched or SchedulerSpec())
    wl = Workload(tuple(r["prompt_len"] for r in trace), tuple(r["output_len"] for r in trace),
                  (1.0,) * len(trace), tuple(r["arrival_s"] for r in trace), arrival="trace")
    return simulate(spec, profile, wl, None).to_exp({"backend": "simdist",
                                                     "instances": list(roles)})


def exp_terms(exp: dict) -> dict[str, float]:
    """lifecycle_terms of a simulated `.exp` dict."""
    recs, lives = [], []
    for q in exp["requests"]:
        recs.append(RequestRecord(q["prompt_len"], q["output_len"], q["start_time"],
                                  q["end_time"], q.get("token_timestamps") or [], q.get("error")))
        lives.append(Lifetime.from_json(q["lifecycle_events"]))
    return lifecycle_terms(recs, lives)


def _ratio(real: float, sim: float) -> float:
    return real / sim if real > 0 and sim > 0 else 1.0


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
              roles: Sequence[str], real_terms: dict[str, float],
              sched: SchedulerSpec | None = None, rounds: int = 3) -> dict:
    """Profile dict whose prefill, decode and transfer terms are scaled until the simulated
    trace spends what `real_terms` measured in each (fixed point: scaling changes batching).
    The factors are recorded under "calibration"."""
    d = profile.to_dict()
    factors = {"prefill": 1.0, "decode": 1.0, "transfer": 1.0}
    for _ in range(rounds):
        prof = LatencyProfile.from_dict(d, source=profile.source)
        sim = exp_terms(simulate_trace(trace, roles, prof, model_name, sched))
        step = {k: _ratio(real_terms[k], sim[k]) for k in factors}
        d = _scaled(d, model_name, step)
        factors = {k: factors[k] * step[k] for k in factors}
    d["calibration"] = {"roles": list(roles), "factors": factors, "num_requests": len(trace),
                        "real_terms_ms": real_terms}
    d["source"] = f"{profile.source} (calibrated)"
    return d
