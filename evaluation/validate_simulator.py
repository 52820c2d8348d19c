"""Simulator vs real server: one workload (dataset, seed, arrival process, several rates) runs
against `distllm serve` through the load generator and through simdist with a fitted profile;
per mode and rate: attainment error (pp), relative error of p50/p90 TTFT and TPOT, and the
lifecycle terms (queueing, prefill, transfer, decode) that explain a miss. Overlay PNG + JSON.

    python evaluation/validate_simulator.py [--profile cpu-demo | profile.json]
        [--model DIR --dataset data.jsonl | (demo model and workload built in --workdir)]
        [--rates 3,6,9,12] [--num-requests 60] [--modes disaggregated,colocated] [-o DIR]

Both sides see the same requests at the same send times: the trace (arrival_s) is drawn once per
rate from the seed and replayed by the load generator (`--arrival trace`) and by simdist. Modes
on this 2-core CPU, as in evaluation/bench_disagg_cpu.py: disaggregated = 1 prefill + 1 decode
instance, colocated = 2 colocated instances, one core (one torch thread) per worker. With
--calibrate (default) a first round on its own trace scales the profile's terms to the serving
stack (simdist.calibrate); errors are reported for the calibrated and the raw profile.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("validate_simulator")
DEFAULT_PROFILE = "cpu-demo"
# mode -> (`distllm serve` flags, simulated instance roles)
MODES = {"disaggregated": (["--mode", "disaggregated"], ("prefill", "decode")),
         "colocated": (["--mode", "colocated", "--num-decode-instances", "2"],
                       ("colocated", "colocated"))}
# the engine's scheduler limits (serve defaults); the simulator gets the same
SERVE_FLAGS = ["--num-kv-blocks", "2048", "--max-num-seqs", "64",
               "--max-num-batched-tokens", "4096"]
TERMS = ("queueing", "prefill", "transfer", "decode")
SCHED_LIMITS = dict(max_prefill_tokens=4096, max_batch_size=64)  # as SERVE_FLAGS


def make_trace(rows: list[dict], n: int, rate: float, seed: int, arrival: str,
               cv: float) -> list[dict]:
    """n requests (the same draw at every rate) with send times `arrival_s` at `rate`."""
    from evaluation.arrivals import ArrivalConfig, arrival_schedule

    idx = np.random.default_rng(seed).choice(len(rows), n, replace=len(rows) < n)
    times = arrival_schedule(ArrivalConfig(arrival, rate, cv, seed), n)
    return [{**rows[int(i)], "arrival_s": float(t)} for i, t in zip(idx, times, strict=True)]


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


def simulate_trace(trace: list[dict], mode: str, profile: object, model_name: str) -> dict:
    """simdist's `.exp` dict of the trace on the mode's instances, scheduler as served."""
    from simdist.calibrate import simulate_trace as simulate_roles

    return simulate_roles(trace, MODES[mode][1], profile, model_name, sched_spec())


def sched_spec():  # noqa: ANN201 - simdist.cluster.SchedulerSpec, imported lazily
    from simdist.cluster import SchedulerSpec

    return SchedulerSpec(**SCHED_LIMITS)


def metrics_of(exp_path: Path, slo: tuple[float, float]) -> dict:
    from distllm.metrics import percentile, slo_attainment
    from evaluation.exp_format import load_exp
    from simdist.calibrate import lifecycle_terms

    run = load_exp(exp_path)
    ok = [r for r in run.records if r.ok]
    out = {"attainment": slo_attainment(run.records, *slo), "completed": len(ok),
           "failed": len(run.records) - len(ok)}
    for name in ("ttft", "tpot"):
        values = [getattr(r, name) for r in ok]
        for q in (50, 90):
            out[f"p{q}_{name}_ms"] = 1e3 * percentile(values, q) if values else float("nan")
    out["terms_ms"] = lifecycle_terms(run.records, run.lifetimes)
    return out


def compare(real: dict, sim: dict) -> dict:
    """Errors of the simulation against the measurement, and the term that is most off."""
    err = {"attainment_pp": 100 * (sim["attainment"] - real["attainment"])}
    for key in ("p50_ttft_ms", "p90_ttft_ms", "p50_tpot_ms", "p90_tpot_ms"):
        err[key.replace("_ms", "_rel")] = (sim[key] - real[key]) / real[key] if real[key] else 0.0
    diffs = {t: sim["terms_ms"][t] - real["terms_ms"][t] for t in TERMS}
    err["term_diff_ms"] = diffs
    err["most_off_term"] = max(diffs, key=lambda t: abs(diffs[t]))
    return err


def passes(err: dict, pp: float = 5.0, rel: float = 0.10) -> bool:
    return (abs(err["attainment_pp"]) <= pp and abs(err["p90_ttft_rel"]) <= rel
            and abs(err["p90_tpot_rel"]) <= rel)


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


def default_slo(profile: object, model_name: str, rows: list[dict]) -> tuple[float, float]:
    """TTFT <= 4x the predicted prefill of a mean prompt; TPOT <= 1.5x a decode step of 16
    mean requests half-way through their output (from the profile, so both sides share it)."""
    cost = profile.stage_cost(model_name, 1, 1)
    p = float(np.mean([r["prompt_len"] for r in rows]))
    o = float(np.mean([r["output_len"] for r in rows]))
    ttft = 4e3 * cost.prefill_stage(int(p), int(p * p))
    tpot = 1.5e3 * cost.decode(16, int(16 * (p + o / 2)))
    return round(ttft, 1), round(tpot, 1)


def run_mode(cfg: argparse.Namespace, mode: str, traces: dict, profile: object,
             slo: tuple[float, float]) -> dict:
    """Warm up, calibrate (optional, on its own trace), then every rate: real vs simulated."""
    from simdist.calibrate import calibrate, exp_request_terms
    from simdist.profile import LatencyProfile
    from simdist.results import write_exp

    out, rows, calib = Path(cfg.output_dir) / mode, [], None
    with Server(cfg.model, MODES[mode][0]) as server:
        run_real(traces["warmup"], cfg.warmup_requests, server.port, slo, out / "warmup",
                 f"{mode}-warmup")
        if cfg.calibrate:
            path = run_real(traces["calibrate"], cfg.num_requests, server.port, slo,
                            out / "calibrate", f"{mode}-calibrate")
            trace = _read_trace(traces["calibrate"])
            real = exp_request_terms(json.loads(path.read_text()))
            calib = calibrate(profile, cfg.profile_model, trace, MODES[mode][1], real,
                              sched_spec())
            sim_profile = LatencyProfile.from_dict(calib)
            logger.info("%s calibration factors: %s", mode, calib["calibration"]["factors"])
        for rate in cfg.rates:
            real = median_metrics([metrics_of(run_real(
                traces[rate], cfg.num_requests, server.port, slo,
                out / f"rate-{rate:g}" / f"real-{k}", f"{mode}-real"), slo)
                for k in range(cfg.repeats)])
            trace, row = _read_trace(traces[rate]), {"rate": rate}
            for key, prof in (("sim_raw", profile), ("sim", sim_profile if calib else None)):
                if prof is None:
                    continue
                sim_path = out / f"rate-{rate:g}" / f"{key}.exp"
                write_exp(simulate_trace(trace, mode, prof, cfg.profile_model), sim_path)
                row[key] = metrics_of(sim_path, slo)
            row.setdefault("sim", row["sim_raw"])
            err = compare(real, row["sim"])
            rows.append({**row, "real": real, "error": err, "pass": passes(err),
                         "error_raw": compare(real, row["sim_raw"])})
            logger.info("%s rate %g: attainment real %.2f sim %.2f", mode, rate,
                        real["attainment"], row["sim"]["attainment"])
    return {"rows": rows, "calibrated_profile": calib}


def median_metrics(runs: list[dict]) -> dict:
    """Per metric, the median over repeated real rounds of one trace (the host is shared:
    back-to-back rounds of the same trace can differ by tens of points); `runs` keeps each."""
    out = {k: float(np.median([r[k] for r in runs])) for k in runs[0] if k != "terms_ms"}
    out["terms_ms"] = {t: float(np.median([r["terms_ms"][t] for r in runs]))
                       for t in runs[0]["terms_ms"]}
    return {**out, "runs": runs} if len(runs) > 1 else out


def _read_trace(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def write_traces(cfg: argparse.Namespace, rows: list[dict]) -> dict:
    """rate -> JSONL trace path (plus a short low-rate warm-up trace)."""
    d = Path(cfg.output_dir) / "traces"
    d.mkdir(parents=True, exist_ok=True)
    specs = {rate: (cfg.num_requests, rate, cfg.seed) for rate in cfg.rates}
    specs["warmup"] = (cfg.warmup_requests, min(cfg.rates), cfg.seed + 1)
    specs["calibrate"] = (cfg.num_requests, cfg.calibrate_rate or float(np.median(cfg.rates)),
                          cfg.seed + 2)
    paths = {}
    for key, (n, rate, seed) in specs.items():
        trace = make_trace(rows, n, rate, seed, cfg.arrival, cfg.cv)
        paths[key] = d / f"trace-{key if isinstance(key, str) else f'{rate:g}'}.jsonl"
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in trace))
    return paths


def validate(cfg: argparse.Namespace) -> dict:
    """Run every mode at every rate; returns the report (also written as JSON + PNG)."""
    from simdist.profile import load_profile
    from simdist.workload import read_jsonl

    profile = load_profile(cfg.profile)
    rows = read_jsonl(cfg.dataset)
    slo = (cfg.ttft_slo_ms, cfg.tpot_slo_ms)
    if None in slo:
        d = default_slo(profile, cfg.profile_model, rows)
        slo = (slo[0] or d[0], slo[1] or d[1])
    traces = write_traces(cfg, rows)
    report = {"meta": {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()},
              "slo_ms": {"ttft": slo[0], "tpot": slo[1]}, "modes": {}}
    out = Path(cfg.output_dir)
    for mode in cfg.modes:
        result = run_mode(cfg, mode, traces, profile, slo)
        report["modes"][mode] = result["rows"]
        if result["calibrated_profile"] is not None:
            report.setdefault("calibration", {})[mode] = result["calibrated_profile"][
                "calibration"]
            path = out / f"profile-calibrated-{mode}.json"
            path.write_text(json.dumps(result["calibrated_profile"], indent=1) + "\n")
    report["all_pass"] = all(r["pass"] for rows_ in report["modes"].values() for r in rows_)
    (out / "validate_simulator.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out / "validate_simulator.png")
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("attainment", "p90_ttft_ms", "p90_tpot_ms")
    fig, axes = plt.subplots(1, len(keys), figsize=(13, 3.8))
    for ax, key in zip(axes, keys, strict=True):
        for i, (mode, rows) in enumerate(report["modes"].items()):
            rates = [r["rate"] for r in rows]
            color = f"C{i}"
            ax.plot(rates, [r["real"][key] for r in rows], "o-", color=color, label=f"{mode} real")
            ax.plot(rates, [r["sim"][key] for r in rows], "x--", color=color, label=f"{mode} sim")
        ax.set_xlabel("request rate (req/s)")
        ax.set_title(key)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(report: dict) -> str:
    slo = report["slo_ms"]
    lines = [f"SLO: TTFT <= {slo['ttft']} ms, TPOT <= {slo['tpot']} ms",
             f"{'mode':>13} {'rate':>5} | {'attain real/sim':>15} {'err pp':>6} {'raw':>6} | "
             f"{'p50/p90 TTFT err':>16} | {'p50/p90 TPOT err':>16} | most-off term"]
    for mode, rows in report["modes"].items():
        for r in rows:
            e = r["error"]
            term = e["most_off_term"]
            lines.append(
                f"{mode:>13} {r['rate']:5g} | {r['real']['attainment']:7.2f}/"
                f"{r['sim']['attainment']:<7.2f} {e['attainment_pp']:+6.1f} "
                f"{r['error_raw']['attainment_pp']:+6.1f} | "
                f"{100 * e['p50_ttft_rel']:+6.1f}/{100 * e['p90_ttft_rel']:+6.1f} % | "
                f"{100 * e['p50_tpot_rel']:+6.1f}/{100 * e['p90_tpot_rel']:+6.1f} % | "
                f"{term} {e['term_diff_ms'][term]:+.1f} ms{'' if r['pass'] else '  MISS'}")
    lines.append("err: calibrated profile (raw: as profiled); TTFT/TPOT errors (sim - real) / "
                 f"real; all within target (5 pp, 10 %): {report['all_pass']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default=DEFAULT_PROFILE, help="profile JSON or shipped name")
    p.add_argument("--profile-model", default="distllm-demo", help="model name in the profile")
    p.add_argument("--model", default=None, help="model dir (default: the demo model)")
    p.add_argument("--dataset", default=None, help="JSONL (default: the demo workload)")
    p.add_argument("--workdir", default="out/demo", help="where the demo model/workload live")
    p.add_argument("--rates", default="3,6,9,12", help="comma-separated request rates (/s)")
    p.add_argument("--num-requests", type=int, default=60, help="requests per rate")
    p.add_argument("--warmup-requests", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1,
                   help="real rounds per rate (medians reported; the host's noise is large)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arrival", default="poisson", choices=("poisson", "gamma", "uniform"))
    p.add_argument("--cv", type=float, default=1.0)
    p.add_argument("--modes", default="disaggregated,colocated")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                   help="scale the profile's terms to a calibration round (its own trace) "
                        "before simulating; the raw profile's errors are reported too")
    p.add_argument("--calibrate-rate", type=float, default=None, help="default: median rate")
    p.add_argument("--ttft-slo-ms", type=float, default=None)
    p.add_argument("--tpot-slo-ms", type=float, default=None)
    p.add_argument("-o", "--output-dir", default="evaluation/results/validate_simulator")
    ns = p.parse_args(argv)
    ns.rates = [float(r) for r in ns.rates.split(",")]
    ns.modes = [m for m in ns.modes.split(",") if m]
    if unknown := set(ns.modes) - set(MODES):
        p.error(f"--modes: unknown {sorted(unknown)}; choose from {sorted(MODES)}")
    return ns


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = parse_args(argv)
    if cfg.model is None or cfg.dataset is None:
        from distllm.entrypoints.demo import ensure_model, make_workload

        workdir = Path(cfg.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        cfg.model = cfg.model or ensure_model(workdir)
        cfg.dataset = cfg.dataset or make_workload(Path(cfg.model), workdir, 200, cfg.seed)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    report = validate(cfg)
    sys.stdout.write(format_report(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
