"""Real rounds of evaluation/validate_simulator.py: `distllm serve` in a subprocess, load-generator
rounds replaying a trace, and the host's CPU use over a round (distllm.profiler.host), with the
calibration round repeated while other processes keep the host busy.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger("validate_simulator")
# the engine's scheduler limits (serve defaults); the simulator gets the same
SERVE_FLAGS = ["--num-kv-blocks", "2048", "--max-num-seqs", "64",
               "--max-num-batched-tokens", "4096"]
QUIET_CORES = 0.25  # other load (cores) under which a calibration round counts as quiet


def run_real(trace_path: Path, n: int, port: int, slo: tuple[float, float], out: Path,
             label: str) -> Path:
    """One load-generator round replaying the trace; returns its `.exp`."""
    from evaluation import benchmark_serving

    out.mkdir(parents=True, exist_ok=True)
    code = benchmark_serving.main([
        "--backend", "distllm", "--port", str(port), "--dataset", str(trace_path),
        "--arrival", "trace", "--num-prompts", str(n), "--ttft-slo-ms", str(slo[0]),
        "--tpot-slo-ms", str(slo[1]), "--output-dir", str(out), "--label", label,
        "--no-progress"])
    exps = sorted(out.glob("*.exp"))
    if code != 0 or not exps:
        raise RuntimeError(f"load generator failed on {trace_path} (exit {code})")
    return exps[-1]


class Server:
    """`distllm serve` in a subprocess for one mode; always stopped on exit."""

    def __init__(self, model: Path, flags: list[str], startup_timeout_s: float = 300.0) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.cmd = [sys.executable, "-m", "distllm", "serve", "--model", str(model), "--port",
                    str(self.port), "--log-level", "warning", *flags, *SERVE_FLAGS]
        self.ns = argparse.Namespace(backend="distllm", host="127.0.0.1", port=self.port,
                                     startup_timeout_s=startup_timeout_s)
        self.proc = None

    def __enter__(self) -> Server:
        import subprocess

        from evaluation.start_api_server import stop, wait_healthy

        logger.info("starting: %s", " ".join(self.cmd))
        self.proc = subprocess.Popen(self.cmd, start_new_session=True)
        if not wait_healthy(self.proc, self.ns):
            stop(self.proc)
            raise RuntimeError(f"server did not become healthy: {' '.join(self.cmd)}")
        return self

    def __exit__(self, *exc: object) -> None:
        from evaluation.start_api_server import stop

        if self.proc is not None:
            stop(self.proc)


def measured_round(server: Server, trace_path: Path, n: int, slo: tuple[float, float],
                   out: Path, label: str) -> tuple[Path, dict]:
    """run_real, plus the CPU seconds the server's process tree (workers, frontend), the load
    generator and the rest of the host spent over the round (distllm.profiler.host)."""
    from distllm.profiler.host import cpu_delta, snapshot

    before = snapshot(server.proc.pid)
    path = run_real(trace_path, n, server.port, slo, out, label)
    return path, cpu_delta(before, snapshot(server.proc.pid))


def quietest_round(cfg: argparse.Namespace, mode: str, server: Server, trace_path: Path,
                   slo: tuple[float, float], out: Path) -> tuple[Path, dict]:
    """The calibration round, repeated (up to --calibrate-tries) while other processes kept
    more than QUIET_CORES of the host busy; the quietest is kept (a burst of foreign load
    in the one round every term is scaled to would skew every prediction)."""
    best = None
    for k in range(cfg.calibrate_tries):
        path, cpu = measured_round(server, trace_path, cfg.num_requests, slo, out / f"try-{k}",
                                   f"{mode}-calibrate")
        other = cpu["background"] / max(cpu["wall"], 1e-9)
        if best is None or other < best[0]:
            best = (other, path, cpu)
        if other <= QUIET_CORES:
            break
        logger.warning("%s calibration round %d: other processes kept %.2f cores busy", mode,
                       k, other)
    return best[1], best[2]
