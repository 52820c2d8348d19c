"""`distllm plan`: search placements, print the ranked table and verdict, write the placement."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from distllm.placement import save_placement
from simdist.cli import add_common_args, build_common
from simdist.hardware import resolve_model_name
from simdist.plan_report import format_table, to_placement, verdict
from simdist.planner import (
    Candidate,
    PlanRequest,
    rank,
    search_colocated,
    search_high,
    search_low,
)
from simdist.runner import TaskRunner


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distllm plan",
                                description="Choose the placement with the best goodput.")
    add_common_args(p)
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=4)
    p.add_argument("--attainment", type=float, default=90.0, help="target, percent (or 0-1)")
    p.add_argument("--affinity", default=None, choices=("high", "low"),
                   help="node affinity algorithm (default: low on one node, else high)")
    p.add_argument("--mode", default="both", choices=("disaggregated", "colocated", "both"))
    p.add_argument("--chunk-tokens", type=int, default=None,
                   help="colocated baseline with chunked prefill (token budget per iteration)")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes")
    p.add_argument("--ray-address", default=None, help="run the searches on this Ray cluster")
    p.add_argument("--max-requests", type=int, default=4000,
                   help="cap on requests per simulation (decode runs scale up to it)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-o", "--output", default="placement.json")
    return p


def plan_main(argv: list[str] | None = None) -> int:
    p = _parser()
    ns = p.parse_args(argv)
    req, profile, pname, wl, runner = _build(p, ns)
    t0 = time.perf_counter()
    disagg, coloc = [], []
    try:
        if ns.mode in ("disaggregated", "both"):
            search = search_high if req.affinity == "high" else search_low
            disagg = rank(search(req, profile, wl, runner))
        if ns.mode in ("colocated", "both"):
            coloc = rank(search_colocated(req, profile, wl, runner))
    finally:
        runner.close()
    best, other = _report(disagg, coloc, req.affinity)
    if best is None:
        sys.stderr.write("no configuration meets the SLO target at any rate; relax the SLOs\n")
        return 1
    workload = {"dataset": ns.workload, "num_requests": req.min_requests,
                "arrival": ns.arrival, "seed": ns.seed}
    save_placement(to_placement(best, req, ns.hardware, workload, pname, other), ns.output)
    sys.stdout.write(f"\nwrote {ns.output} ({best.kind}: {best.label}); "
                     f"search took {time.perf_counter() - t0:.2f} s\n")
    return 0


def _build(p: argparse.ArgumentParser, ns: argparse.Namespace):  # noqa: ANN202
    """(PlanRequest, profile, profile name, workload, runner), or a parser error."""
    if ns.ttft_slo_ms is None or ns.tpot_slo_ms is None:
        p.error("--ttft-slo-ms and --tpot-slo-ms are required")
    target = ns.attainment / 100 if ns.attainment > 1 else ns.attainment
    affinity = ns.affinity or ("low" if ns.num_nodes == 1 else "high")
    chunk, ns.chunk_tokens = ns.chunk_tokens, None
    min_requests, ns.num_requests = ns.num_requests, max(ns.num_requests, ns.max_requests)
    profile, pname, wl, sched = build_common(p, ns)
    try:
        coloc = None if chunk is None else replace(sched, chunk_tokens=chunk)
        req = PlanRequest(resolve_model_name(ns.model), ns.num_nodes, ns.gpus_per_node,
                          ns.ttft_slo_ms, ns.tpot_slo_ms, target, affinity, ns.mode, sched,
                          coloc, min_requests)
        runner = TaskRunner(profile, wl, ns.jobs, ns.ray_address, not ns.no_progress)
    except ValueError as e:
        p.error(str(e))
    return req, profile, pname, wl, runner


def _report(disagg: list[Candidate], coloc: list[Candidate],
            affinity: str) -> tuple[Candidate | None, Candidate | None]:
    """Print the tables and the verdict; returns (best plan, best of the other mode)."""
    out = sys.stdout
    if disagg:
        out.write(f"\ndisaggregated ({affinity} affinity)\n{format_table(disagg)}\n")
    if coloc:
        out.write(f"\ncolocated\n{format_table(coloc)}\n")
    best_d, best_c = (disagg or [None])[0], (coloc or [None])[0]
    if best_d is not None and best_c is not None:
        out.write("\n" + verdict(best_d, best_c) + "\n")
    cands = [c for c in (best_d, best_c) if c is not None and c.result.per_gpu_rps > 0]
    if not cands:
        return None, None
    best = max(cands, key=lambda c: (c.result.per_gpu_rps, c.cluster_rps))
    return best, (best_c if best is best_d else best_d)


