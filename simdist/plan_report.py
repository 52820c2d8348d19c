"""Planner output: the ranked table, the disaggregate-or-not verdict and the placement JSON
(distllm.placement, DESIGN.md section 4) with the predicted figures."""
from __future__ import annotations

import math

from distllm.placement import SLO, Placement, StagePlacement
from simdist.planner import Candidate, PlanRequest

PLANNER_VERSION = "simdist-0.1"


def format_table(cands: list[Candidate], limit: int = 15) -> str:
    head = f"{'#':>2}  {'config':<58} {'GPUs':>4} {'per-GPU rps':>11} {'cluster rps':>11} binding"
    lines = [head, "-" * len(head)]
    for i, c in enumerate(cands[:limit], 1):
        reps = f"{c.replicas}x[{c.label}]" if c.replicas > 1 else c.label
        lines.append(f"{i:>2}  {reps:<58} {c.num_gpus:>4} {c.result.per_gpu_rps:>11.3f} "
                     f"{c.cluster_rps:>11.3f} {c.result.binding or '-'}")
    if len(cands) > limit:
        lines.append(f"    ... {len(cands) - limit} more")
    return "\n".join(lines)


def verdict(best_disagg: Candidate | None, best_coloc: Candidate | None) -> str:
    """Whether to disaggregate, by per-GPU goodput (the planner's objective)."""
    if best_disagg is None or best_coloc is None:
        return ""
    d, c = best_disagg.result.per_gpu_rps, best_coloc.result.per_gpu_rps
    detail = (f"{d:.3f} vs {c:.3f} rps/GPU; cluster {best_disagg.cluster_rps:.2f} vs "
              f"{best_coloc.cluster_rps:.2f} rps")
    if c <= 0 and d <= 0:
        return "Neither mode meets the SLO target at any rate on this cluster."
    if c <= 0:
        return f"Disaggregate: colocated never meets the target ({detail})."
    if d >= c:
        return f"Disaggregate: {d / c:.2f}x the per-GPU goodput of colocated ({detail})."
    return f"Stay colocated: {c / max(d, 1e-12):.2f}x the per-GPU goodput ({detail})."


def _stage(c: Candidate, role: str) -> StagePlacement:
    insts = [i for i in c.result.spec.instances if i.role == role]
    return StagePlacement(insts[0].tp, insts[0].pp, len(insts) * c.replicas)


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 4)


def to_placement(best: Candidate, req: PlanRequest, hardware: str, workload: dict,
                 profile_name: str, other: Candidate | None) -> Placement:
    r = best.result
    predicted = {"per_gpu_goodput_rps": _num(r.per_gpu_rps),
                 "cluster_goodput_rps": _num(best.cluster_rps),
                 "attainment": _num(r.attainment), "p90_ttft_ms": _num(r.p90_ttft_ms),
                 "p90_tpot_ms": _num(r.p90_tpot_ms), "binding_slo": r.binding or None,
                 "num_gpus_used": best.num_gpus}
    if other is not None:
        predicted[f"{other.kind}_per_gpu_goodput_rps"] = _num(other.result.per_gpu_rps)
        if other.result.per_gpu_rps > 0:
            predicted[f"gain_vs_{other.kind}"] = _num(r.per_gpu_rps / other.result.per_gpu_rps)
    kw = {}
    if best.kind == "disaggregated":
        kw = {"prefill": _stage(best, "prefill"), "decode": _stage(best, "decode")}
    else:
        kw = {"colocated": _stage(best, "colocated")}
    return Placement(model=req.model, mode=best.kind, hardware=hardware,
                     num_nodes=req.num_nodes, gpus_per_node=req.gpus_per_node,
                     affinity=req.affinity, pp_cross=best.pp_cross,
                     slo=SLO(req.ttft_slo_ms, req.tpot_slo_ms, req.attainment),
                     workload=workload, predicted=predicted, profile=profile_name,
                     planner_version=PLANNER_VERSION, **kw)
