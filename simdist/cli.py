"""Command lines: `distllm simulate`, `distllm plan`, `distllm ablation` (also
`python -m simdist {simulate,plan,ablation}`). Each main is parse -> config -> build -> run."""
from __future__ import annotations

import argparse
import logging
import sys

from distllm.placement import load_placement
from simdist.cluster import ClusterSpec, InstanceSpec, SchedulerSpec, simulate
from simdist.hardware import HARDWARE, get_model, resolve_model_name
from simdist.placement_pack import pack_nodes
from simdist.profile import SHIPPED, LatencyProfile, load_profile
from simdist.results import write_exp
from simdist.roofline import roofline_profile
from simdist.workload import ARRIVALS, PRESETS, make_workload

logger = logging.getLogger("simdist")


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="facebook/opt-13b", help="HF id or alias (opt-13b, ...)")
    p.add_argument("--hardware", default=None, choices=sorted(HARDWARE),
                   help="GPU kind (default: the --profile's own hardware, else a100-80g)")
    p.add_argument("--profile", default=None, help=f"profile JSON, {sorted(SHIPPED)} or "
                   "'roofline' (default: shipped profile if it has the model, else roofline)")
    p.add_argument("--workload", default="sharegpt",
                   help=f"dataset JSONL or a preset {sorted(PRESETS)}")
    p.add_argument("--num-requests", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arrival", default="poisson", choices=ARRIVALS)
    p.add_argument("--arrival-cv", type=float, default=1.0, help="gamma arrivals: CV of gaps")
    p.add_argument("--max-prefill-tokens", type=int, default=4096)
    p.add_argument("--max-batch-size", type=int, default=256)
    p.add_argument("--ttft-slo-ms", type=float, default=None)
    p.add_argument("--tpot-slo-ms", type=float, default=None)
    p.add_argument("-v", "--verbose", action="store_true")


def resolve_profile(arg: str | None, model: str, hardware: str) -> tuple[LatencyProfile, str]:
    """(profile, name): explicit file/name, 'roofline', or the shipped default."""
    if arg == "roofline":
        return roofline_profile([model], hardware), "roofline"
    if arg is not None:
        return load_profile(arg), arg
    if hardware == "a100-80g":
        prof = load_profile("distserve-a100")
        if resolve_model_name(model) in prof.models:
            return prof, "distserve-a100"
    return roofline_profile([model], hardware), "roofline"


def build_common(p: argparse.ArgumentParser, ns: argparse.Namespace):  # noqa: ANN201
    """(profile, profile name, workload, scheduler spec) or a parser error naming the flag."""
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING)
    if ns.num_requests < 1:
        p.error("--num-requests must be >= 1")
    try:
        max_len = get_model(ns.model).max_seq_len
    except KeyError:
        max_len = 2048
    try:
        profile, pname = resolve_profile(ns.profile, ns.model, ns.hardware or "a100-80g")
        profile.model(ns.model)
        if ns.hardware is None:
            # NOTE: a measured profile (e.g. cpu-demo) names its own hardware; report that one.
            ns.hardware = profile.hardware or "a100-80g"
    except (KeyError, FileNotFoundError, ValueError) as e:
        p.error(f"--profile/--model: {e}")
    try:
        wl = make_workload(ns.workload, ns.num_requests, ns.seed, ns.arrival, ns.arrival_cv,
                           max_len)
    except (OSError, ValueError) as e:
        p.error(f"--workload/--arrival: {e}")
    try:
        sched = SchedulerSpec(ns.max_prefill_tokens, ns.max_batch_size,
                              getattr(ns, "chunk_tokens", None))
    except ValueError as e:
        p.error(f"--max-prefill-tokens/--max-batch-size/--chunk-tokens: {e}")
    return profile, pname, wl, sched


def _simulate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distllm simulate", description="Simulate one deployment.")
    add_common_args(p)
    p.add_argument("--rate", type=float, default=None, help="requests/s (not for --arrival trace)")
    p.add_argument("--placement", default=None, help="simulate a placement JSON instead")
    p.add_argument("--mode", default="disaggregated", choices=("disaggregated", "colocated"))
    for role in ("prefill", "decode", "colocated"):
        p.add_argument(f"--{role}-tp", type=int, default=1)
        p.add_argument(f"--{role}-pp", type=int, default=1)
        p.add_argument(f"--num-{role}", type=int, default=1, help=f"{role} instances")
    p.add_argument("--chunk-tokens", type=int, default=None,
                   help="colocated: chunked prefill with this token budget per iteration")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("-o", "--output", default=None, help="write the .exp JSON here")
    return p


def _stages(ns: argparse.Namespace) -> list[InstanceSpec] | None:
    """The instances, placed on nodes (None when they do not fit)."""
    if ns.placement is not None:
        pl = load_placement(ns.placement)
        ns.num_nodes, ns.gpus_per_node, ns.model = pl.num_nodes, pl.gpus_per_node, pl.model
        if pl.hardware in HARDWARE:
            ns.hardware = pl.hardware
        roles = ("prefill", "decode") if pl.mode == "disaggregated" else ("colocated",)
        stages = [(r, getattr(pl, r)) for r in roles]
        insts = [InstanceSpec(r, s.tp, s.pp) for r, s in stages for _ in range(s.instances)]
        if pl.mode == "disaggregated" and pl.affinity == "low":
            # NOTE: low affinity keeps each prefill/decode stage pair inside one node, so every
            # KV transfer is NVLink; the simulator only needs them on a common node.
            return insts
        return pack_nodes(insts, ns.num_nodes, ns.gpus_per_node)
    roles = ("prefill", "decode") if ns.mode == "disaggregated" else ("colocated",)
    insts = [InstanceSpec(r, getattr(ns, f"{r}_tp"), getattr(ns, f"{r}_pp"))
             for r in roles for _ in range(getattr(ns, f"num_{r}"))]
    return pack_nodes(insts, ns.num_nodes, ns.gpus_per_node)


def simulate_main(argv: list[str] | None = None) -> int:
    p = _simulate_parser()
    ns = p.parse_args(argv)
    if ns.rate is None and ns.arrival != "trace":
        p.error("--rate is required unless --arrival trace")
    try:
        insts = _stages(ns)
    except (ValueError, FileNotFoundError) as e:
        p.error(f"--placement/--*-tp/--*-pp/--num-*: {e}")
    if insts is None:
        p.error("--num-nodes/--gpus-per-node: the instances do not fit on the cluster")
    profile, pname, wl, sched = build_common(p, ns)
    try:
        spec = ClusterSpec(resolve_model_name(ns.model), tuple(insts), sched)
        res = simulate(spec, profile, wl, ns.rate)
    except KeyError as e:
        p.error(f"--*-tp: {e}")
    meta = {"backend": "simdist", "model": spec.model, "hardware": ns.hardware,
            "profile": pname, "dataset": ns.workload, "rate": ns.rate,
            "num_prompts": len(wl), "seed": ns.seed, "arrival": ns.arrival, "cv": ns.arrival_cv,
            "instances": [f"{i.role} tp{i.tp} pp{i.pp} node{i.node}" for i in insts]}
    exp = res.to_exp(meta, ns.ttft_slo_ms, ns.tpot_slo_ms)
    if ns.output:
        write_exp(exp, ns.output)
    s = exp["summary"]
    keys = ["completed", "failed", "request_throughput", "mean_ttft_ms", "p90_ttft_ms",
            "p99_ttft_ms", "mean_tpot_ms", "p90_tpot_ms", "p99_tpot_ms", "attainment",
            "request_goodput", "per_gpu_goodput_rps", "simulated_events"]
    for k in keys:
        if k in s:
            v = s[k]
            sys.stdout.write(f"{k:<22} {v:.4g}\n" if isinstance(v, float) else f"{k:<22} {v}\n")
    return 0


def plan_main(argv: list[str] | None = None) -> int:
    from simdist.plan_cli import plan_main as _plan_main  # keeps this module small

    return _plan_main(argv)


def ablation_main(argv: list[str] | None = None) -> int:
    from simdist.ablation import ablation_main as _ablation_main

    return _ablation_main(argv)


def main(argv: list[str] | None = None) -> int:
    """`python -m simdist {simulate,plan,ablation} ...`"""
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = {"simulate": simulate_main, "plan": plan_main, "ablation": ablation_main}
    if not argv or argv[0] not in cmds:
        sys.stderr.write(f"usage: python -m simdist {{{','.join(cmds)}}} [flags]\n")
        return 2
    return cmds[argv[0]](argv[1:])
