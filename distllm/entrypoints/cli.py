"""The `distllm` console script: one subcommand per job, each implemented in its own module and
imported lazily so `distllm plan` never loads torch and `distllm generate` never loads simdist."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function taking argv, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "generate": ("distllm.entrypoints.generate", "main", "offline batch generation (LLM API)"),
    "demo": (
        "distllm.entrypoints.demo",
        "main",
        "the main job end to end on a built-in tiny model",
    ),
    "simulate": ("simdist.cli", "simulate_main", "simulate a cluster on a workload (simdist)"),
    "plan": ("simdist.cli", "plan_main", "search parallelism/placement for max per-GPU goodput"),
    "ablation": ("simdist.cli", "ablation_main", "CPU-only simulator ablations"),
    "serve": ("distllm.entrypoints.serve", "main", "the HTTP API server (OpenAI + /generate)"),
    "bench": ("evaluation.benchmark_serving", "main", "load-generate against a running server"),
    "profile": ("distllm.entrypoints.profile", "main", "time the engine, fit a simdist profile"),
}


def _usage() -> str:
    lines = ["usage: distllm <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    lines.append("\n'distllm <command> --help' describes a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"distllm: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        print(f"distllm {name}: cannot import {module_name} ({e})", file=sys.stderr)
        return 2
    return int(getattr(module, func_name)(rest) or 0)
