"""Benchmark of simdist: simulated requests per second on one core, planner search times and
the ablation's run time. Prints a table and writes JSON.

    python evaluation/bench_simulator.py [--requests 20000] [--skip-66b] [--skip-ablation]

Times are CPU seconds of this process (process_time) and wall seconds; on a shared machine the
CPU figure is the one to compare. Targets (issue 6): >= 20,000 req/s for 1P+1D OPT-13B on a
ShareGPT-like workload near its knee; plan 1x4 OPT-13B < 2 s; 4x8 OPT-66B high < 60 s;
full ablation < 120 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simdist.cluster import ClusterSpec, InstanceSpec, SchedulerSpec, simulate  # noqa: E402
from simdist.profile import load_profile  # noqa: E402
from simdist.workload import make_workload  # noqa: E402


def _timed(fn) -> tuple[object, float, float]:  # noqa: ANN001
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def bench_simulator(num_requests: int) -> list[dict]:
    """1P+1D OPT-13B (prefill TP2, decode TP1) near its knee, plus colocated references."""
    prof = load_profile("distserve-a100")
    wl = make_workload("sharegpt", num_requests, seed=0)
    cases = [
        ("1P(tp2)+1D(tp1) disaggregated", ClusterSpec(
            "opt-13b", (InstanceSpec("prefill", 2), InstanceSpec("decode", 1))), 4.8),
        ("colocated tp2 (vLLM-style)", ClusterSpec(
            "opt-13b", (InstanceSpec("colocated", 2),)), 5.0),
        ("colocated tp2 chunked 512", ClusterSpec(
            "opt-13b", (InstanceSpec("colocated", 2),), SchedulerSpec(chunk_tokens=512)), 5.0),
    ]
    rows = []
    for name, spec, rate in cases:
        simulate(spec, prof, make_workload("sharegpt", 500, seed=1), rate)  # warm-up
        res, cpu, wall = _timed(lambda: simulate(spec, prof, wl, rate))  # noqa: B023
        rows.append({"case": name, "rate_rps": rate, "requests": num_requests,
                     "events": res.num_events, "cpu_s": cpu, "wall_s": wall,
                     "sim_requests_per_s": num_requests / cpu,
                     "events_per_s": res.num_events / cpu,
                     "attainment_200_100": res.attainment(200, 100)})
    return rows


def bench_cli(name: str, argv: list[str], target_s: float) -> dict:
    from simdist.cli import main

    with open(os.devnull, "w") as devnull:
        stdout, sys.stdout = sys.stdout, devnull
        try:
            rc, cpu, wall = _timed(lambda: main(argv))
        finally:
            sys.stdout = stdout
    return {"case": name, "argv": argv, "rc": rc, "cpu_s": cpu, "wall_s": wall,
            "target_s": target_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--skip-66b", action="store_true")
    ap.add_argument("--skip-ablation", action="store_true")
    ap.add_argument("-o", "--output", default="bench_simulator.json")
    ns = ap.parse_args()
    sim_rows = bench_simulator(ns.requests)
    cli_rows = [bench_cli("plan 1x4 OPT-13B (200/100 ms, 90 %)", [
        "plan", "--model", "opt-13b", "--num-nodes", "1", "--gpus-per-node", "4",
        "--ttft-slo-ms", "200", "--tpot-slo-ms", "100", "--no-progress", "-o", os.devnull], 2.0)]
    if not ns.skip_66b:
        cli_rows.append(bench_cli("plan 4x8 OPT-66B high affinity (400/100 ms)", [
            "plan", "--model", "opt-66b", "--num-nodes", "4", "--gpus-per-node", "8",
            "--affinity", "high", "--mode", "disaggregated", "--ttft-slo-ms", "400",
            "--tpot-slo-ms", "100", "--no-progress", "-o", os.devnull], 60.0))
    if not ns.skip_ablation:
        cli_rows.append(bench_cli("full ablation OPT-66B (Figure 11)", [
            "ablation", "--no-progress", "--output-dir", "/tmp/simdist_ablation"], 120.0))
    sys.stdout.write(f"{'simulator case':<34} {'req/s (1 core)':>14} {'events/s':>10} "
                     f"{'CPU s':>7} {'attain':>7}\n")
    for r in sim_rows:
        sys.stdout.write(f"{r['case']:<34} {r['sim_requests_per_s']:>14,.0f} "
                         f"{r['events_per_s']:>10,.0f} {r['cpu_s']:>7.2f} "
                         f"{r['attainment_200_100']:>7.3f}\n")
    sys.stdout.write(f"\n{'search':<46} {'CPU s':>7} {'wall s':>7} {'target s':>8} ok\n")
    for r in cli_rows:
        ok = r["rc"] == 0 and r["cpu_s"] < r["target_s"]
        sys.stdout.write(f"{r['case']:<46} {r['cpu_s']:>7.2f} {r['wall_s']:>7.2f} "
                         f"{r['target_s']:>8.0f} {'yes' if ok else 'NO'}\n")
    out = {"machine": {"python": platform.python_version(), "cpu": platform.processor(),
                       "cores": os.cpu_count()}, "simulator": sim_rows, "searches": cli_rows}
    Path(ns.output).write_text(json.dumps(out, indent=2) + "\n")
    sys.stdout.write(f"\nwrote {ns.output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
