"""`distllm ablation`: DistServe's Figure 11 on CPU. Five systems on one cluster, each with the
configuration the planner picks for it: DistServe-High, DistServe-Low, vLLM++ (colocated, best
TP/PP), vLLM (colocated, PP=1) and colocated with chunked prefill. Curves: SLO attainment vs
per-GPU rate, and vs SLO scale at a fixed rate. Writes ablation.json and ablation.png.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from simdist.cli import add_common_args, build_common
from simdist.cluster import simulate
from simdist.hardware import resolve_model_name
from simdist.planner import (
    Candidate,
    PlanRequest,
    rank,
    search_colocated,
    search_high,
    search_low,
    steady_requests,
)
from simdist.results import write_exp
from simdist.runner import TaskRunner

logger = logging.getLogger(__name__)
RATE_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
SLO_SCALES = (0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distllm ablation", description=__doc__.splitlines()[0])
    add_common_args(p)
    p.set_defaults(model="facebook/opt-66b", ttft_slo_ms=400.0, tpot_slo_ms=100.0)
    p.add_argument("--num-nodes", type=int, default=2)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--attainment", type=float, default=90.0)
    p.add_argument("--chunk-tokens", type=int, default=512, help="chunked-prefill budget")
    p.add_argument("--max-requests", type=int, default=2000)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--output-dir", default="ablation_out")
    return p


def choose_systems(req: PlanRequest, profile, wl, runner: TaskRunner,  # noqa: ANN001
                   chunk_tokens: int) -> dict[str, Candidate | None]:
    """The best plan of each system (None when nothing meets the target)."""
    chunked = replace(req, colocated_sched=replace(req.sched, chunk_tokens=chunk_tokens))
    found = {
        "DistServe-High": search_high(replace(req, affinity="high"), profile, wl, runner),
        "DistServe-Low": search_low(replace(req, affinity="low"), profile, wl, runner),
        "vLLM++": search_colocated(req, profile, wl, runner),
        "vLLM": search_colocated(req, profile, wl, runner, pp_max=1),
        "Chunked-prefill": search_colocated(chunked, profile, wl, runner),
    }
    return {name: (rank(c)[0] if c and rank(c)[0].result.per_gpu_rps > 0 else None)
            for name, c in found.items()}


def curves(systems: dict[str, Candidate | None], req: PlanRequest, profile, wl  # noqa: ANN001
           ) -> dict[str, dict]:
    """Attainment vs per-GPU rate (around the best goodput) and vs SLO scale at that rate."""
    best = max((c.result.per_gpu_rps for c in systems.values() if c), default=0.0)
    rates = [round(best * f, 4) for f in RATE_FACTORS]
    out = {}
    for name, cand in systems.items():
        if cand is None:
            out[name] = {"config": None}
            continue
        spec = cand.result.spec
        n = steady_requests(spec, profile, wl, req.min_requests)
        att = []
        for r in rates:
            res = simulate(spec, profile, wl, r * spec.num_gpus, None, n)
            att.append(res.attainment(req.ttft_slo_ms, req.tpot_slo_ms))
        res = simulate(spec, profile, wl, best * spec.num_gpus, None, n)
        scale = [res.attainment(req.ttft_slo_ms * s, req.tpot_slo_ms * s) for s in SLO_SCALES]
        out[name] = {"config": cand.label, "replicas": cand.replicas,
                     "gpus_per_group": spec.num_gpus,
                     "per_gpu_goodput_rps": cand.result.per_gpu_rps,
                     "rates_per_gpu": rates, "attainment_vs_rate": att,
                     "slo_scales": list(SLO_SCALES), "attainment_vs_slo_scale": scale,
                     "rate_for_slo_scale": best}
    return out


def plot(data: dict, path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, d in data["systems"].items():
        if d.get("config") is None:
            continue
        a.plot(d["rates_per_gpu"], [x * 100 for x in d["attainment_vs_rate"]], "o-", label=name)
        b.plot(d["slo_scales"], [x * 100 for x in d["attainment_vs_slo_scale"]], "o-", label=name)
    for ax, xl in ((a, "per-GPU rate (req/s)"), (b, "SLO scale")):
        ax.axhline(target * 100, color="grey", ls="--", lw=0.8)
        ax.set_xlabel(xl)
        ax.set_ylabel("SLO attainment (%)")
        ax.grid(alpha=0.3)
    b.invert_xaxis()
    a.legend(fontsize=8)
    fig.suptitle(data["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ablation_main(argv: list[str] | None = None) -> int:
    p = _parser()
    ns = p.parse_args(argv)
    target = ns.attainment / 100 if ns.attainment > 1 else ns.attainment
    chunk, ns.chunk_tokens = ns.chunk_tokens, None
    min_requests, ns.num_requests = ns.num_requests, max(ns.num_requests, ns.max_requests)
    profile, pname, wl, sched = build_common(p, ns)
    try:
        req = PlanRequest(resolve_model_name(ns.model), ns.num_nodes, ns.gpus_per_node,
                          ns.ttft_slo_ms, ns.tpot_slo_ms, target, "high", "both", sched,
                          None, min_requests)
        runner = TaskRunner(profile, wl, ns.jobs, None, not ns.no_progress)
    except ValueError as e:
        p.error(str(e))
    try:
        systems = choose_systems(req, profile, wl, runner, chunk)
    finally:
        runner.close()
    data = {"title": f"{req.model} on {ns.num_nodes}x{ns.gpus_per_node} {ns.hardware}, "
                     f"TTFT {ns.ttft_slo_ms:g} ms / TPOT {ns.tpot_slo_ms:g} ms @ {target:.0%}",
            "profile": pname, "workload": ns.workload, "attainment_target": target,
            "systems": curves(systems, req, profile, wl)}
    out = Path(ns.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_exp(data, out / "ablation.json")
    plot(data, out / "ablation.png", target)
    for name, d in data["systems"].items():
        gp = d.get("per_gpu_goodput_rps")
        sys.stdout.write(f"{name:<16} {d['config'] or 'none meets the target':<60} "
                         f"{'' if gp is None else f'{gp:.3f} rps/GPU'}\n")
    sys.stdout.write(f"wrote {out / 'ablation.json'} and {out / 'ablation.png'}\n")
    logger.info("ablation done")
    return 0
