"""`distllm demo` (what `make demo` runs): the main job end to end on a built-in tiny model.

Stages, each printed as it runs (`make demo`, ~2-3 minutes on 2 cores):
  1. model     a seeded random Llama-3-style model in HF format (cached under --workdir)
  2. workload  ShareGPT-shaped synthetic requests, lengths counted by the model's tokenizer
  3. plan      `distllm plan` with the shipped CPU profile of this model (simdist/profiles/
               cpu-demo.json, made by `distllm profile`): placement + predicted goodput
  4. serve     `distllm serve --placement` (1 prefill + 1 decode instance on Ray, a core each),
               a warm-up round, the load generator at the predicted goodput (the host's CPU
               use measured, distllm.profiler.host), the same trace through simdist
  5. report    predicted vs measured (attainment, p50/p90 TTFT and TPOT, lifecycle terms, the
               host section: frontend CPU per step, latency, other load)
The server is always stopped; a failing stage ends the demo with its error (exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

DEMO_MODEL = dict(
    arch="llama3",
    seed=0,
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)
# ShareGPT-shaped lengths, scaled to the tiny model (prompt mean 755 -> 190, output 200 -> 50).
WORKLOAD = dict(prompt=("lognormal", 190, 160), output=("lognormal", 50, 50), max_context=768)
PROFILE_MODEL = "distllm-demo"  # the model's name in the shipped profile
TERMS = ("queueing", "prefill", "transfer", "decode")
WARMUP_REQUESTS = 30


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distllm demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="out/demo", help="model, dataset and results go here")
    p.add_argument("--num-requests", type=int, default=80, help="benchmarked requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="cpu-demo", help="latency profile for the planner")
    p.add_argument("--ttft-slo-ms", type=float, default=None, help="default: from the profile")
    p.add_argument("--tpot-slo-ms", type=float, default=None, help="default: from the profile")
    return p


def _stage(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def ensure_model(workdir: Path) -> Path:
    from distllm.testing import make_tiny_model

    model_dir = workdir / "model"
    stamp = model_dir / "demo-config.json"
    if stamp.exists() and json.loads(stamp.read_text()) == DEMO_MODEL:
        print(f"reusing {model_dir}")
        return model_dir
    overrides = {k: v for k, v in DEMO_MODEL.items() if k not in ("arch", "seed")}
    make_tiny_model(model_dir, arch=DEMO_MODEL["arch"], seed=DEMO_MODEL["seed"], **overrides)
    stamp.write_text(json.dumps(DEMO_MODEL))
    print(
        f"built {model_dir} ({DEMO_MODEL['num_hidden_layers']} layers, hidden "
        f"{DEMO_MODEL['hidden_size']}, GQA {DEMO_MODEL['num_attention_heads']}/"
        f"{DEMO_MODEL['num_key_value_heads']})"
    )
    return model_dir


def make_workload(model_dir: Path, workdir: Path, n: int, seed: int) -> Path:
    from dataset.common import load_tokenizer, write_dataset
    from dataset.prepare_synthetic import LengthDist, generate

    counter = load_tokenizer(model_dir)
    reqs = generate(
        n,
        LengthDist(*WORKLOAD["prompt"]),
        LengthDist(*WORKLOAD["output"]),
        seed,
        counter=counter,
        max_context=WORKLOAD["max_context"],
    )
    path = workdir / "workload.jsonl"
    write_dataset(
        path,
        reqs,
        {
            "source": "synthetic",
            "preset": "sharegpt-scaled",
            "seed": seed,
            "tokenizer": str(model_dir),
        }
        | WORKLOAD,
    )
    lens = [r.prompt_len for r in reqs]
    outs = [r.output_len for r in reqs]
    print(
        f"{path}: {n} requests, prompt mean {sum(lens) / n:.0f} tokens, output mean "
        f"{sum(outs) / n:.0f} tokens"
    )
    return path


def default_slo(profile_name: str, workload: Path) -> tuple[float, float]:
    from evaluation.validate_simulator import default_slo as slo_from_profile
    from simdist.profile import load_profile
    from simdist.workload import read_jsonl

    return slo_from_profile(load_profile(profile_name), PROFILE_MODEL, read_jsonl(workload))


def plan(workload: Path, workdir: Path, args: argparse.Namespace,
         slo: tuple[float, float]) -> dict:
    """`distllm plan` (disaggregated) on a 2-core "node"; returns the placement dict."""
    from simdist.cli import plan_main

    out = workdir / "placement.json"
    code = plan_main([
        "--profile", args.profile, "--model", PROFILE_MODEL, "--workload", str(workload),
        "--num-nodes", "1", "--gpus-per-node", "2", "--mode", "disaggregated",
        "--ttft-slo-ms", str(slo[0]), "--tpot-slo-ms", str(slo[1]), "--attainment", "90",
        "--max-prefill-tokens", "4096", "--max-batch-size", "64", "--num-requests", "200",
        "--max-requests", "800", "--seed", str(args.seed), "--no-progress", "-o", str(out)])
    if code != 0:
        raise RuntimeError("the planner found no placement meeting the SLOs")
    return json.loads(out.read_text())


def _write_trace(path: Path, rows: list[dict], n: int, rate: float, seed: int) -> list[dict]:
    from evaluation.validate_simulator import make_trace

    trace = make_trace(rows, n, rate, seed, "poisson", 1.0)
    path.write_text("".join(json.dumps(r) + "\n" for r in trace))
    return trace


def serve_and_bench(model_dir: Path, workdir: Path, rate: float, args: argparse.Namespace,
                    slo: tuple[float, float]) -> tuple[dict, dict]:
    """Serve the placement, replay a seeded Poisson trace at `rate` through the load generator
    (measuring the host's CPU use, distllm.profiler.host) and through simdist; returns
    (measured, predicted) metrics of that trace, the measured host section under "host"."""
    from evaluation.validate_simulator import (
        Server,
        measured_host,
        measured_round,
        metrics_of,
        run_real,
        simulate_trace,
    )
    from simdist.profile import load_profile
    from simdist.results import write_exp
    from simdist.workload import read_jsonl

    rows = read_jsonl(workdir / "workload.jsonl")
    bench = workdir / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    trace = _write_trace(bench / "trace.jsonl", rows, args.num_requests, rate, args.seed)
    # a loaded warm-up (the first loaded round after start-up runs slow)
    _write_trace(bench / "warmup.jsonl", rows, WARMUP_REQUESTS, rate, args.seed + 1)
    with Server(model_dir, ["--placement", str(workdir / "placement.json")]) as server:
        print(f"server up on port {server.port}; warm-up, then {args.num_requests} requests at "
              f"{rate:.2f} req/s (load generator log: {bench / 'bench.log'})", flush=True)
        with open(bench / "bench.log", "w") as log, contextlib.redirect_stdout(log):
            run_real(bench / "warmup.jsonl", WARMUP_REQUESTS, server.port, slo,
                     bench / "warmup", "demo-warmup")
            exp, cpu = measured_round(server, bench / "trace.jsonl", args.num_requests, slo,
                                      bench / "real", "demo")
    profile = load_profile(args.profile)
    sim_path = bench / "simdist.exp"
    write_exp(simulate_trace(trace, "disaggregated", profile, PROFILE_MODEL), sim_path)
    host = measured_host(exp, cpu, trace, ("prefill", "decode"), profile, PROFILE_MODEL)
    return {**metrics_of(exp, slo), "host": host}, metrics_of(sim_path, slo)


def format_comparison(measured: dict, predicted: dict, profile_host: dict | None = None) -> str:
    rows = [("SLO attainment (%)", "attainment", 100.0)]
    rows += [(f"{k.replace('_ms', '')} (ms)", k, 1.0)
             for k in ("p50_ttft_ms", "p90_ttft_ms", "p50_tpot_ms", "p90_tpot_ms")]
    lines = [f"{'':<22}{'predicted':>12}{'measured':>12}{'error':>12}"]
    for label, key, scale in rows:
        p, m = predicted[key] * scale, measured[key] * scale
        err = f"{p - m:+.1f} pp" if key == "attainment" else f"{100 * (p - m) / m:+.1f} %"
        lines.append(f"{label:<22}{p:>12.1f}{m:>12.1f}{err:>12}")
    for term in TERMS:
        p, m = predicted["terms_ms"][term], measured["terms_ms"][term]
        lines.append(f"{'mean ' + term + ' (ms)':<22}{p:>12.2f}{m:>12.2f}{p - m:>+10.2f}ms")
    return "\n".join(lines + host_lines(measured.get("host"), profile_host))


def host_lines(measured: dict | None, profile_host: dict | None) -> list[str]:
    """The host's CPU use in the benchmark next to the profile's host section (simdist.host)."""
    if not measured:
        return []
    keys = (("frontend CPU/step (ms)", "frontend_cpu_ms_per_step"),
            ("loadgen CPU/token (ms)", "frontend_cpu_ms_per_token"),
            ("other load (cores)", "background_cores"),
            ("frontend latency (ms)", "frontend_latency_ms"))
    lines = [f"host ({measured['cores']} cores){'profile':>12}{'measured':>12}"]
    for label, key in keys:
        p = (profile_host or {}).get(key)
        lines.append(f"{label:<22}{'-' if p is None else f'{p:.3f}':>12}{measured[key]:>12.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        _stage("1/5 model")
        model_dir = ensure_model(workdir)
        _stage("2/5 workload")
        dataset = make_workload(model_dir, workdir, 200, args.seed)
        _stage(f"3/5 plan (profile {args.profile})")
        auto = default_slo(args.profile, dataset)
        slo = (args.ttft_slo_ms or auto[0], args.tpot_slo_ms or auto[1])
        placement = plan(dataset, workdir, args, slo)
        rate = placement["predicted"]["cluster_goodput_rps"]
        _stage("4/5 serve the placement (disaggregated) and benchmark at the predicted goodput")
        measured, predicted = serve_and_bench(model_dir, workdir, rate, args, slo)
    except ImportError as e:
        print(f"demo failed: {e} (run it from the repository root: make demo)", file=sys.stderr)
        return 1
    except (RuntimeError, ValueError, OSError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    _stage("5/5 predicted vs measured")
    print(f"SLO TTFT <= {slo[0]} ms, TPOT <= {slo[1]} ms; rate {rate:.2f} req/s "
          f"(predicted goodput, {placement['predicted']['per_gpu_goodput_rps']:.2f} per core)")
    from simdist.profile import load_profile

    print(format_comparison(measured, predicted, load_profile(args.profile).host))
    report = {"slo_ms": slo, "rate": rate, "placement": placement, "measured": measured,
              "predicted": predicted}
    (workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ndemo done in {time.perf_counter() - t0:.1f} s; report in {workdir / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
