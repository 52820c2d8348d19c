"""Disaggregated vs colocated serving on this CPU: 1 prefill + 1 decode instance (one core each)
against colocated instances (both cores), same model, same Poisson workload, several rates.

    python evaluation/bench_disagg_cpu.py [--num-requests 30] [--rates 1,1.5,2,2.5,3]
        [--rounds 1] [--modes ...] [-o DIR]

Modes: "disaggregated" (the engine's default KV transport: shared memory between workers on one
node), "disaggregated-gloo" (gloo forced), "colocated-2x1" (2 instances x 1 thread),
"colocated-1x2" (1 instance x 2 threads). SLOs come from unloaded latencies measured in the same
round (the best of the modes): TTFT <= 4x the prefill of a mean prompt; TPOT <= 2x (tight) or 5x
(loose) one decode step. Goodput = the highest rate at which >= 90 % of requests meet both SLOs
(DistServe's interpolation). With --rounds K every rate runs K times on fresh arrivals; the
headline goodputs pool the rounds (mean attainment per rate, each round scored against its own
SLOs), and every round's own ratio is reported too: this host's speed drifts by +-30 % over
minutes. Also the KV migration bandwidth of each disaggregated mode's transport (prefill worker
-> decode worker, gather + send + scatter) against a memcpy of the same bytes. Writes
bench_disagg_cpu.json and .png into -o; prints a table.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL_SHAPE = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                   num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048)
TTFT_FACTOR, TPOT_TIGHT, TPOT_LOOSE, TARGET = 4.0, 2.0, 5.0, 0.9


def workload(n: int, rate: float, seed: int, args: argparse.Namespace
             ) -> list[tuple[float, list[int], int]]:
    """(arrival offset s, prompt ids, output len) of n Poisson arrivals."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, n)
    lens = rng.integers(args.prompt_len // 2, args.prompt_len * 3 // 2 + 1, n)
    outs = rng.integers(args.output_len // 2, args.output_len * 3 // 2 + 1, n)
    return [(float(t), rng.integers(4, 500, int(p)).tolist(), int(o))
            for t, p, o in zip(np.cumsum(gaps) - gaps[0], lens, outs, strict=True)]


# mode -> (DisaggConfig mode, instances, torch threads per worker, --kv-transport); each mode
# uses both cores. "disaggregated" takes the engine's default transport (auto), "-gloo" forces
# gloo, so the transport's share of the result is measured side by side.
MODES = {"disaggregated": ("disaggregated", 1, 1, "auto"),
         "disaggregated-gloo": ("disaggregated", 1, 1, "gloo"),
         "colocated-2x1": ("colocated", 2, 1, "auto"), "colocated-1x2": ("colocated", 1, 2, "auto")}
DISAGG = "disaggregated"  # the mode the goal is about


def build_engine(model_dir: Path, mode: str):  # noqa: ANN201
    from distllm.config import EngineConfig
    from distllm.disagg_config import DisaggConfig
    from distllm.engine.disagg_controller import DisaggEngine

    config = EngineConfig.from_kwargs(str(model_dir), block_size=16, num_kv_blocks=1024,
                                      max_num_seqs=64, max_num_batched_tokens=2048,
                                      max_model_len=2048)
    kind, instances, threads, transport = MODES[mode]
    disagg = DisaggConfig(mode=kind, num_decode_instances=instances,
                          num_threads_per_worker=threads, kv_transport=transport)
    return DisaggEngine(config, disagg)


def run(engine, jobs: list[tuple[float, list[int], int]]) -> tuple[list, float]:  # noqa: ANN001
    """Replay the arrivals against the engine; (RequestOutputs, duration s)."""
    from distllm.sampling_params import SamplingParams

    start, i, done = time.monotonic(), 0, []
    while i < len(jobs) or engine.has_unfinished_requests():
        now = time.monotonic()
        while i < len(jobs) and start + jobs[i][0] <= now:
            params = SamplingParams(max_tokens=jobs[i][2], temperature=0.0, ignore_eos=True)
            engine.add_request(f"r{i}", jobs[i][1], params, arrival_time=start + jobs[i][0])
            i += 1
        wait = start + jobs[i][0] - time.monotonic() if i < len(jobs) else 0.02
        done += [o for o in engine.step(timeout_s=max(0.0, min(wait, 0.02))) if o.finished]
    return done, time.monotonic() - start


def unloaded(engine, args: argparse.Namespace) -> tuple[float, float]:  # noqa: ANN001
    """(prefill s of a mean prompt, decode step s), one request alone, median of 3."""
    ttfts, tpots = [], []
    for k in range(4):
        prompt = [5 + (k + j) % 400 for j in range(args.prompt_len)]
        outs, _ = run(engine, [(0.0, prompt, 32)])
        rec = outs[0].to_record()
        if k:  # the first one warms up
            ttfts.append(rec.ttft)
            tpots.append(rec.tpot)
    return float(np.median(ttfts)), float(np.median(tpots))


def migration_bandwidth(engine, num_blocks: int, repeats: int = 5) -> dict:  # noqa: ANN001
    """GB/s of moving `num_blocks` blocks prefill -> decode over the engine's KV transport,
    and of a memcpy of the same bytes."""
    import ray
    import torch

    from distllm.engine.stage_engine import submit_migration

    src, dst = engine.prefill[0], engine.decode[0]
    blocks = list(range(num_blocks))
    times, nbytes = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        nbytes = sum(ray.get(submit_migration(src, dst, blocks, blocks), timeout=120))
        times.append(time.perf_counter() - t0)
    src_buf = torch.empty(nbytes // 4, dtype=torch.float32).uniform_()
    dst_buf = torch.zeros_like(src_buf)  # NOTE: preallocated, so no page faults are timed
    copy_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst_buf.copy_(src_buf)
        copy_times.append(time.perf_counter() - t0)
    return {"bytes": nbytes, "transfer_s": min(times), "gb_s": nbytes / min(times) / 1e9,
            "memcpy_gb_s": nbytes / min(copy_times) / 1e9}


def one_round(engines: dict, args: argparse.Namespace, k: int, bar) -> dict:  # noqa: ANN001
    """Round k: every mode's unloaded latencies, then every rate (arrivals seeded per round).
    The modes take turns on chunks of each rate's arrivals, so bursts of background load hit
    them alike. NOTE: each chunk drains before the next starts, which slightly favours every
    mode alike at the highest rates."""
    results = {m: {"unloaded": unloaded(e, args), "runs": []} for m, e in engines.items()}
    for rate in args.rates:
        jobs = workload(args.num_requests, rate, args.seed + 1000 * k, args)
        for mode in engines:
            results[mode]["runs"].append({"rate": rate, "duration_s": 0.0, "records": []})
        for lo in range(0, len(jobs), args.chunk):
            chunk = [(t - jobs[lo][0], p, o) for t, p, o in jobs[lo:lo + args.chunk]]
            for mode, engine in engines.items():
                outs, duration = run(engine, chunk)
                results[mode]["runs"][-1]["duration_s"] += duration
                results[mode]["runs"][-1]["records"] += [o.to_record() for o in outs]
        bar.update(1)
    return results


def sweep(model_dir: Path, args: argparse.Namespace) -> dict:
    """Every mode's engine is built up front; --rounds rounds of every rate, then the KV
    migration bandwidth of each disaggregated mode's transport."""
    from tqdm import tqdm

    engines = {mode: build_engine(model_dir, mode) for mode in args.modes}
    try:
        with tqdm(total=args.rounds * len(args.rates), desc="rounds x rates") as bar:
            rounds = [one_round(engines, args, k, bar) for k in range(args.rounds)]
        migration = {m: migration_bandwidth(e, args.migration_blocks)
                     for m, e in engines.items() if MODES[m][0] == "disaggregated"}
        return {"rounds": rounds, "migration": migration}
    finally:
        for engine in engines.values():
            engine.shutdown()


def score(runs: list[dict], ttft_ms: float, tpot_ms: float) -> tuple[list, float]:
    from distllm.metrics import max_rate_meeting, summarize

    rows = [dict(rate=r["rate"], **summarize(r["records"], r["duration_s"], ttft_ms, tpot_ms))
            for r in runs]
    goodput = max_rate_meeting([(r["rate"], r["attainment"]) for r in rows], TARGET)
    return rows, goodput


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-requests", type=int, default=30, help="requests per rate and round")
    p.add_argument("--rates", default="1,1.5,2,2.5,3", help="comma-separated request rates (/s)")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds of every rate (own arrivals and unloaded latencies each); the "
                        "headline goodputs pool the rounds' attainment")
    p.add_argument("--prompt-len", type=int, default=512,
                   help="mean prompt length (uniform in [0.5x, 1.5x])")
    p.add_argument("--output-len", type=int, default=24,
                   help="mean output length (uniform in [0.5x, 1.5x])")
    p.add_argument("--chunk", type=int, default=12, help="arrivals per mode turn")
    p.add_argument("--migration-blocks", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default=",".join(MODES), help=f"subset of {list(MODES)}")
    p.add_argument("-o", "--output-dir", default="evaluation/results")
    args = p.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        p.error(f"--modes: unknown {sorted(unknown)}; choose from {list(MODES)}")
    if not any(MODES[m][0] == "colocated" for m in modes):
        p.error("--modes: needs at least one colocated mode to compare with")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    args.modes = [DISAGG] + [m for m in modes if m != DISAGG]
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    import ray

    from distllm.testing import make_tiny_model

    model_dir = make_tiny_model(Path(tempfile.mkdtemp()) / "m", arch="llama", seed=0,
                                **MODEL_SHAPE)
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False)
    load_before = os.getloadavg()
    swept = sweep(model_dir, args)
    report = make_report(swept, args, load_before)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_disagg_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "bench_disagg_cpu.png")
    print_table(report)
    return 0


def round_slos(results: dict) -> dict[str, tuple[float, float]]:
    """A round's SLOs from its unloaded latencies, the best of the modes."""
    prefill_s = min(r["unloaded"][0] for r in results.values())
    decode_s = min(r["unloaded"][1] for r in results.values())
    return {"tight": (TTFT_FACTOR * prefill_s * 1e3, TPOT_TIGHT * decode_s * 1e3),
            "loose": (TTFT_FACTOR * prefill_s * 1e3, TPOT_LOOSE * decode_s * 1e3)}


def ratio(goodputs: dict[str, float]) -> float:
    """Disaggregated goodput over the best colocated mode's."""
    best = max(g for m, g in goodputs.items() if MODES[m][0] == "colocated")
    return goodputs[DISAGG] / best if best > 0 else float("inf")


def make_report(swept: dict, args: argparse.Namespace, load_before: tuple) -> dict:
    """Per round: SLOs, rows and goodputs; pooled: each rate's attainment averaged over the
    rounds (each round scored against its own SLOs), its goodputs and ratio (the headline)."""
    from distllm.metrics import max_rate_meeting

    rounds = []
    for results in swept["rounds"]:
        slos = round_slos(results)
        modes = {m: {name: dict(zip(("rows", "goodput_rps"), score(r["runs"], *slo),
                                    strict=True)) for name, slo in slos.items()}
                 for m, r in results.items()}
        rounds.append({"unloaded_ms": {m: [1e3 * x for x in r["unloaded"]]
                                       for m, r in results.items()},
                       "slo_ms": slos, "modes": modes,
                       **{f"goodput_ratio_{n}": ratio({m: v[n]["goodput_rps"]
                                                       for m, v in modes.items()})
                          for n in slos}})
    pooled: dict[str, dict] = {m: {} for m in args.modes}
    for name in ("tight", "loose"):
        for mode in args.modes:
            per_rate = [[rd["modes"][mode][name]["rows"][i]["attainment"] for rd in rounds]
                        for i in range(len(args.rates))]
            points = [(rate, float(np.mean(a))) for rate, a in zip(args.rates, per_rate,
                                                                  strict=True)]
            pooled[mode][name] = {"attainment": points,
                                  "goodput_rps": max_rate_meeting(points, TARGET)}
    report = {"meta": {**vars(args), "loadavg_before": load_before,
                       "loadavg_after": os.getloadavg()},
              "model": MODEL_SHAPE, "modes_spec": {m: MODES[m] for m in args.modes},
              "rounds": rounds, "pooled": pooled, "migration": swept["migration"]}
    for name in ("tight", "loose"):
        report[f"goodput_ratio_{name}"] = ratio({m: v[name]["goodput_rps"]
                                                 for m, v in pooled.items()})
        report[f"goodput_ratio_{name}_rounds"] = [rd[f"goodput_ratio_{name}"] for rd in rounds]
    return report


def print_table(report: dict) -> None:
    for k, rd in enumerate(report["rounds"]):
        print(f"\n=== round {k}: unloaded (prefill of a mean prompt, decode step) ms: "
              + ", ".join(f"{m} {p:.0f}/{d:.1f}" for m, (p, d) in rd["unloaded_ms"].items()))
        for name, (ttft, tpot) in rd["slo_ms"].items():
            print(f"SLO {name}: TTFT <= {ttft:.1f} ms, TPOT <= {tpot:.1f} ms")
            print(f"{'rate':>6} | {'mode':>18} | {'attain':>6} | {'p90 TTFT':>9} | "
                  f"{'p90 TPOT':>9}")
            for mode, per_slo in rd["modes"].items():
                for row in per_slo[name]["rows"]:
                    print(f"{row['rate']:6.2f} | {mode:>18} | {row['attainment']:6.2f} | "
                          f"{row['p90_ttft_ms']:9.1f} | {row['p90_tpot_ms']:9.1f}")
            goodputs = {m: round(v[name]["goodput_rps"], 2) for m, v in rd["modes"].items()}
            print(f"goodput req/s: {goodputs}, disagg / best colocated = "
                  f"{rd[f'goodput_ratio_{name}']:.2f}")
    print(f"\n=== pooled over {len(report['rounds'])} round(s) (mean attainment per rate)")
    for name in ("tight", "loose"):
        goodputs = {m: round(v[name]["goodput_rps"], 2) for m, v in report["pooled"].items()}
        rounds = ", ".join(f"{x:.2f}" for x in report[f"goodput_ratio_{name}_rounds"])
        print(f"SLO {name}: goodput (>= {TARGET:.0%} attainment) req/s {goodputs}; disagg / "
              f"best colocated = {report[f'goodput_ratio_{name}']:.2f} (rounds: {rounds})")
    for mode, mig in report["migration"].items():
        print(f"KV migration ({mode}): {mig['bytes'] / 1e6:.1f} MB in "
              f"{mig['transfer_s'] * 1e3:.1f} ms = {mig['gb_s']:.2f} GB/s; memcpy "
              f"{mig['memcpy_gb_s']:.2f} GB/s")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slos = report["rounds"][0]["slo_ms"]
    fig, axes = plt.subplots(1, len(slos), figsize=(11, 4), sharey=True)
    for ax, name in zip(axes, slos, strict=True):
        for mode, per_slo in report["pooled"].items():
            pts = per_slo[name]["attainment"]
            ax.plot([r for r, _ in pts], [a for _, a in pts], marker="o",
                    label=f"{mode} (goodput {per_slo[name]['goodput_rps']:.2f}/s)")
        ax.axhline(TARGET, color="gray", linestyle="--", linewidth=0.8)
        ttft, tpot = slos[name]
        ax.set_title(f"{name} (round 0: TTFT<={ttft:.0f} ms, TPOT<={tpot:.0f} ms)", fontsize=9)
        ax.set_xlabel("request rate (req/s)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(f"SLO attainment (mean of {len(report['rounds'])} round(s))")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
