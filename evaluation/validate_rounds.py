"""Real rounds of evaluation/validate_simulator.py: `distllm serve` in a subprocess, load-generator
rounds replaying a trace, and the host's CPU use over a round (distllm.profiler.host), with each
calibration round repeated while other processes keep the host busy, its rate, and the host
section measured in a round and pooled over the rounds.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger("validate_simulator")
# the engine's scheduler limits (serve defaults); the simulator gets the same
SERVE_FLAGS = ["--num-kv-blocks", "2048", "--max-num-seqs", "64",
               "--max-num-batched-tokens", "4096"]
SCHED_LIMITS = dict(max_prefill_tokens=4096, max_batch_size=64,  # as SERVE_FLAGS
                    colocated_routing="requests",  # as the engine routes
                    # as the engine's async scheduling (the step after the running one is
                    # composed while it runs): a migration landing mid-step joins the decode step
                    # after next (offline on five saved runs' rows: 18 of 40 within every target
                    # instead of 15), and a colocated instance's arrivals and prefilled requests
                    # wait one step more when a step is already composed (the real rounds' first
                    # token gaps show it: simdist/README.md)
                    async_lag=True)
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


def sched_spec():  # noqa: ANN201 - simdist.cluster.SchedulerSpec, imported lazily
    from simdist.cluster import SchedulerSpec

    return SchedulerSpec(**SCHED_LIMITS)


def measured_host(exp_path: Path, cpu: dict, trace: list[dict], roles: tuple[str, ...],
                  profile: object, model_name: str) -> dict:
    """The profile's host section measured in a round (`cpu`: measured_round's CPU seconds;
    the round's engine steps: its trace replayed without host contention)."""
    from distllm.profiler.host import frontend_latency_ms, host_section
    from simdist.calibrate import replay_trace, with_host

    steps = replay_trace(trace, roles, with_host(profile, None), model_name,
                         sched_spec()).cluster.num_steps
    host = host_section(cpu, steps, sum(r["output_len"] for r in trace))
    host["frontend_latency_ms"] = frontend_latency_ms(json.loads(exp_path.read_text()))
    return host


def pooled_host(hosts: list[dict]) -> dict:
    """One host section from several rounds' (measured_host): per key the median of the
    rounds' values (a burst of other load in one round moves a median of three by nothing, of
    two by half); each round's raw figures are kept under measured.rounds."""
    keys = [k for k, v in hosts[0].items() if isinstance(v, int | float)]
    out = {k: float(np.median([h[k] for h in hosts])) for k in keys}
    if "cores" in out:
        out["cores"] = int(round(out["cores"]))
    out["measured"] = {"how": f"median per key of {len(hosts)} calibration rounds",
                       "rounds": [{k: v for k, v in h.items() if k != "measured"}
                                  | {"raw": h.get("measured", {})} for h in hosts]}
    return out


def calibration_rates(cfg: argparse.Namespace) -> list[float]:
    """Rate of each calibration round: --calibrate-rate, then (1 - spread) and (1 + spread)
    times it, cycling; rounds at one rate replay one trace (the 4th the 1st's: the pair the
    host's noise is measured on). NOTE: rounds at one rate see about the same batches, so the
    decode fit cannot tell a fixed per-step cost from a scale (simdist.calibrate.decode_fit);
    the second round goes lower, where this host's rounds are also the least noisy."""
    rate = cfg.calibrate_rate or float(np.median(cfg.rates))
    factors = (1.0, 1.0 - cfg.calibrate_rate_spread, 1.0 + cfg.calibrate_rate_spread)
    return [rate * factors[k % 3] for k in range(cfg.calibrate_rounds)]


def host_with_contention(cfg: argparse.Namespace, host: dict, profile: object,
                         rounds: list[tuple], roles: tuple[str, ...],
                         decode_samples: list[tuple] | None = None) -> dict:
    """The pooled host section plus jitter and contention (simdist.host). When two calibration
    rounds replayed one trace, how far they disagree request by request is recorded
    (measured.replay_noise: simdist.calibrate.replay_pair_stats) and, with --fit-jitter, the
    host jitter fitted to it (simdist.calibrate.fit_jitter). Contention coefficients, with
    --fit-contention, fitted to the calibration rounds (with the jitter) by --contention-fit
    (quantiles:
    simdist.calibrate.fit_contention_quantiles, any mode; contrast:
    simdist.calibrate.fit_contention, a prefill + decode pair only, as colocated rounds do not
    say which instance ran a step); else the profile's own (absent: 0). With
    --transfer-contention, a prefill + decode pair's `contention_transfer` is measured from the
    rounds' migrations first (simdist.calibrate.transfer_contention), so the fits see it
    (measured and reported either way). The host jitter the probe measured before the servers
    started (`cfg.host_jitter`, --measure-jitter) goes in too, unless --fit-jitter fits one.
    `decode_samples` (the decode sweep's rounds) go to the quantile fit's calibrations. With
    --migrate-contention (default) the measured transfer contrast also stretches the decode
    steps that start while migrations land (host.contention_migrate): the receive and the
    steps share the decode worker's core, so each slows the other."""
    from simdist.calibrate import (
        exp_records,
        fit_contention,
        fit_contention_quantiles,
        fit_jitter,
        replay_pair_stats,
        transfer_contention,
        with_host,
    )

    fitted = ("contention_prefill", "contention_decode")  # what the contention fits return
    keys = (*fitted, "contention_transfer", "contention_migrate")
    out = {**host, **{k: v for k, v in (profile.host or {}).items() if k in keys}}
    if tuple(roles) == ("prefill", "decode"):
        measured = transfer_contention([e for _, e in rounds])
        if measured is not None:
            out["measured"] = {**out.get("measured", {}), "transfer_contention": measured}
            if getattr(cfg, "transfer_contention", False):
                out["contention_transfer"] = measured["contention_transfer"]
            if getattr(cfg, "migrate_contention", False):
                # NOTE: the same sharing seen from the decode step's side
                out["contention_migrate"] = measured["contention_transfer"]
    probe = getattr(cfg, "host_jitter", None)
    if probe and probe["jitter_sd"] > 0 and not getattr(cfg, "fit_jitter", False):
        out.update(jitter_sd=probe["jitter_sd"], jitter_ms=probe["jitter_ms"], jitter_seed=0.0)
        out["measured"] = {**out.get("measured", {}), "jitter_probe": {
            k: v for k, v in probe.items() if k != "config"}}
    pair = replay_pair(rounds)
    if pair is not None:
        (trace, a), (_, b) = rounds[pair[0]], rounds[pair[1]]
        noise = replay_pair_stats(exp_records(a), exp_records(b))
        out["measured"] = {**out.get("measured", {}),
                           "replay_noise": {**noise, "rounds": list(pair)}}
        if getattr(cfg, "fit_jitter", False):
            jit = fit_jitter(with_host(profile, out), cfg.profile_model, trace, a, b, roles,
                             sched_spec())
            out.update(jitter_sd=jit["jitter_sd"], jitter_ms=jit["jitter_ms"], jitter_seed=0.0)
            out["measured"]["jitter_fit"] = {**jit, "rounds": list(pair)}
    method = getattr(cfg, "contention_fit", "quantiles")
    fit = None
    if cfg.fit_contention and method == "quantiles":
        fit = fit_contention_quantiles(with_host(profile, out), cfg.profile_model, rounds,
                                       roles, sched_spec(), decode_samples=decode_samples)
    elif cfg.fit_contention and tuple(roles) == ("prefill", "decode"):
        fit = fit_contention(with_host(profile, out), cfg.profile_model, rounds, roles,
                             sched_spec())
    if fit is not None:
        out.update({k: fit[k] for k in fitted})
        out["measured"] = {**out.get("measured", {}), "contention_fit": fit}
    return out


def replay_pair(rounds: list[tuple]) -> tuple[int, int] | None:
    """Indices of the first two rounds `[(trace, exp)]` that replayed the same trace."""
    for j in range(len(rounds)):
        for i in range(j):
            if rounds[i][0] == rounds[j][0]:
                return i, j
    return None
