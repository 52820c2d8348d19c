"""Benchmark of the load generator itself against a fast mock server in another process:
dispatch precision (lateness of each send vs its schedule) and sustained request rate.

    python -m evaluation.bench_loadgen [--num-requests 2000] [--output loadgen.json]

Targets (issue 5): p99 lateness <= 2 ms at 200 req/s; >= 500 req/s sustained. Prints a table and
writes the figures as JSON, with the 1-minute load average next to each row (other processes on
the machine inflate lateness); the `poisson*` row times the bare dispatch loop without HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.common import DatasetRequest
from distllm.metrics import percentile
from evaluation.arrivals import ArrivalConfig, arrival_schedule
from evaluation.backends import create_backend
from evaluation.load_runner import RunnerConfig, run_round, sleep_until
from evaluation.mock_server import MockServer, start_mock_server


def _serve(port: int, tpot_s: float) -> None:
    async def run() -> None:
        await start_mock_server(MockServer(ttft_s=0.0, tpot_s=tpot_s), port)
        await asyncio.Event().wait()

    asyncio.run(run())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mock server did not start")


async def measure(
    url: str, rate: float, n: int, output_len: int, arrival: str, seed: int, spin_s: float
) -> dict:
    """One round at `rate`; dispatch lateness and achieved throughput."""
    reqs = [DatasetRequest(f"p{i}", 8, output_len) for i in range(n)]
    schedule = arrival_schedule(ArrivalConfig(arrival, rate, 1.0, seed), n)
    backend = create_backend("distllm", url)
    res = await run_round(backend, reqs, schedule, RunnerConfig(spin_s=spin_s))
    late_ms = [x * 1e3 for x in res.lateness_s]
    ok = sum(r.ok for r in res.records)
    send_span = max(res.dispatch_times) or float("nan")
    return {
        "target_rate": rate,
        "arrival": arrival,
        "num_requests": n,
        "completed": ok,
        "duration_s": res.duration_s,
        "achieved_rps": ok / res.duration_s,
        "dispatch_rps": n / send_span,
        "p50_lateness_ms": percentile(late_ms, 50),
        "p99_lateness_ms": percentile(late_ms, 99),
        "max_lateness_ms": max(late_ms),
    }


async def measure_timer_only(rate: float, n: int, arrival: str, seed: int, spin_s: float) -> dict:
    """Baseline: the same dispatch loop with no HTTP work, i.e. what the OS scheduler and the
    event loop alone cost (under CPU contention this dominates the lateness)."""
    schedule = arrival_schedule(ArrivalConfig(arrival, rate, 1.0, seed), n)
    late_ms = []
    t0 = time.perf_counter()
    for t in schedule:
        await sleep_until(t0 + t, spin_s)
        late_ms.append((time.perf_counter() - t0 - t) * 1e3)
    return {
        "target_rate": rate,
        "arrival": f"{arrival}*",
        "num_requests": n,
        "completed": 0,
        "duration_s": time.perf_counter() - t0,
        "achieved_rps": 0.0,
        "dispatch_rps": n / t,
        "p50_lateness_ms": percentile(late_ms, 50),
        "p99_lateness_ms": percentile(late_ms, 99),
        "max_lateness_ms": max(late_ms),
    }


def format_table(rows: list[dict]) -> str:
    cols = [
        ("rate/s", "target_rate", "{:g}"),
        ("arrival", "arrival", "{}"),
        ("n", "num_requests", "{}"),
        ("ok", "completed", "{}"),
        ("achieved/s", "achieved_rps", "{:.1f}"),
        ("p50 late ms", "p50_lateness_ms", "{:.3f}"),
        ("p99 late ms", "p99_lateness_ms", "{:.3f}"),
        ("max late ms", "max_lateness_ms", "{:.3f}"),
        ("load 1m", "loadavg_1m", "{:.2f}"),
    ]
    lines = [" ".join(f"{name:>12}" for name, _, _ in cols)]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(" ".join(f"{spec.format(r[key]):>12}" for _, key, spec in cols))
    return "\n".join(lines)


def run_all(url: str, args: argparse.Namespace) -> list[dict]:
    rows = []
    for rate in [float(x) for x in args.rates.split(",")]:
        for arrival in args.arrivals.split(","):
            for rep in range(args.repeat):
                load = os.getloadavg()[0]
                row = asyncio.run(
                    measure(
                        url,
                        rate,
                        args.num_requests,
                        args.output_len,
                        arrival,
                        args.seed + rep,
                        args.spin_ms / 1e3,
                    )
                )
                rows.append({**row, "repeat": rep, "loadavg_1m": load})
    if args.timer_baseline:
        load = os.getloadavg()[0]
        row = asyncio.run(
            measure_timer_only(200.0, args.num_requests, "poisson", args.seed, args.spin_ms / 1e3)
        )
        rows.append({**row, "repeat": 0, "loadavg_1m": load})
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-requests", type=int, default=2000)
    p.add_argument("--rates", default="200,500,1000", help="comma-separated req/s")
    p.add_argument("--arrivals", default="poisson,uniform", help="comma-separated processes")
    p.add_argument("--repeat", type=int, default=1, help="rounds per (rate, arrival)")
    p.add_argument("--output-len", type=int, default=4, help="tokens per request")
    p.add_argument("--tpot-ms", type=float, default=1.0, help="mock server time per token")
    p.add_argument("--spin-ms", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="loadgen_bench.json")
    p.add_argument(
        "--timer-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the bare dispatch loop at 200/s (rows marked *)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    port = _free_port()
    proc = mp.get_context("spawn").Process(
        target=_serve, args=(port, args.tpot_ms / 1e3), daemon=True
    )
    proc.start()
    try:
        _wait_ready(port)
        rows = run_all(f"http://127.0.0.1:{port}", args)
    finally:
        proc.terminate()
        proc.join(5)
    sys.stdout.write(format_table(rows) + "\n")
    info = {"cpus": os.cpu_count(), "args": vars(args)}
    Path(args.output).write_text(json.dumps({"env": info, "rows": rows}, indent=2) + "\n")
    sys.stdout.write(f"wrote {args.output}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
