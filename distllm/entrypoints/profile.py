"""`distllm profile`: time the real engine's prefill and decode steps on a grid, fit simdist's
latency model, measure KV capacity and KV transfer bandwidth, and write a profile JSON.

    distllm profile --model PATH [--tp N] [--device cpu|cuda] -o profile.json
        [--backend ray|inprocess] [--name NAME] [--quick] [cache flags as in `distllm serve`]

The profile has the model under --name (default: the model directory's name); `distllm plan
--profile profile.json --model NAME` and `distllm simulate` use it as is.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from distllm.config import EngineConfig
from distllm.disagg_config import DisaggConfig

QUICK = dict(prefill_batch_sizes=(1, 2, 4), prompt_lens=(16, 64, 256),
             decode_batch_sizes=(1, 4, 16), context_lens=(64, 256), repeats=3, warmup=1)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distllm profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    EngineConfig.add_cli_args(p)
    g = p.add_argument_group("profiling")
    g.add_argument("-o", "--output", default="profile.json", help="profile JSON to write")
    g.add_argument("--backend", default="ray", choices=("ray", "inprocess"),
                   help="ray: instances as the disaggregated engine builds them (KV transfer "
                        "through its migration path); inprocess: one worker here (tp = pp = 1)")
    g.add_argument("--name", default=None, help="model name in the profile (default: dir name)")
    g.add_argument("--hardware", default=None, help="hardware label (default: --device)")
    g.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    g.add_argument("--repeats", type=int, default=5, help="timings per grid point (median)")
    g.add_argument("--quick", action="store_true", help="a small grid (tests, smoke runs)")
    g.add_argument("--no-transfer", action="store_true", help="skip the KV bandwidth measurement")
    g.add_argument("--no-progress", action="store_true")
    return p


def build_timer(ns: argparse.Namespace, config: EngineConfig):  # noqa: ANN201
    from distllm.profiler.timers import InProcessTimer, RayTimer

    if ns.backend == "inprocess":
        return InProcessTimer(config, ns.threads)
    p = config.parallel
    disagg = DisaggConfig(prefill_tp=p.tp, prefill_pp=p.pp, decode_tp=p.tp, decode_pp=p.pp,
                          num_threads_per_worker=ns.threads)
    return RayTimer(config, disagg)


def run(ns: argparse.Namespace) -> dict:
    """Profile as the flags say; returns the profile dict (also written to -o)."""
    from distllm.profiler import ProfileGridConfig, profile_model, to_profile

    config = EngineConfig.from_cli_args(ns)
    timer = build_timer(ns, config)
    try:
        grid = ProfileGridConfig(
            **(QUICK if ns.quick else {"repeats": ns.repeats}),
            max_prefill_tokens=config.scheduler.max_num_batched_tokens,
            max_decode_tokens=timer.kv_capacity_tokens(), block_size=config.cache.block_size)
        result = profile_model(timer, grid, not ns.no_progress, not ns.no_transfer)
    finally:
        timer.close()
    name = ns.name or Path(ns.model.rstrip("/")).name
    p = config.parallel
    profile = to_profile(result, name, config.model.kv_bytes_per_token, p.tp, p.pp,
                         ns.hardware or ns.device, source=f"distllm profile --backend {ns.backend}")
    Path(ns.output).write_text(json.dumps(profile, indent=1) + "\n")
    return profile


def report(profile: dict, path: str) -> str:
    fit = profile["fit"]
    lines = [f"wrote {path}"]
    for phase in ("prefill", "decode"):
        lines.append(f"{phase:<8} fit residual: max {100 * fit[phase]['max_rel']:.1f} %, "
                     f"rms {100 * fit[phase]['rms_rel']:.1f} %")
    (name, model), = profile["models"].items()
    lines.append(f"{name}: {json.dumps(model['tp'])}")
    lines.append(f"KV capacity {model['kv_capacity_tokens']} tokens, "
                 f"{model['kv_bytes_per_token']} bytes/token")
    if fit.get("transfer"):
        t = fit["transfer"]
        lines.append(f"KV transfer {t['gb_s']:.2f} GB/s + {t['latency_ms']:.2f} ms per transfer")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ns = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        profile = run(ns)
    except (ValueError, RuntimeError) as e:
        logging.getLogger("distllm.profile").error("distllm profile: %s", e)
        return 2
    sys.stdout.write(report(profile, ns.output) + "\n")
    return 0
