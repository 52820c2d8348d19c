"""How steps reach the workers: the step channel vs a Ray task per step, side by side in one run.

Two harnesses of `distllm profile --backend ray` (a prefill and a decode instance each, built
as the disaggregated engine builds them) on the same model, one per `--worker-rpc`, measured
interleaved round by round (warm-up first), on decode steps of `--batch-sizes` requests at
`--context-len` tokens:

    round trip   submit -> result of one step, nothing else in flight (what a prefill waits)
    pipelined    interval between results with the pipeline full (async scheduling: how the
                 engine runs decode steps; the worker's step plus whatever the RPC adds to it)
    driver CPU   the driver's CPU per pipelined step (on a 2-core host it competes with the
                 workers)

Medians over rounds, and the ratio ray / channel of each. Table + JSON + PNG.

    python -m evaluation.bench_step_rpc [--model DIR] [--batch-sizes 1,8,32]
        [--context-len 256] [--steps 40] [--rounds 5]
        [-o evaluation/results/bench_step_rpc.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RPCS = ("channel", "ray")
METRICS = ("round_trip_ms", "pipelined_ms", "driver_cpu_ms")


def build_timer(model_dir: Path, rpc: str):  # noqa: ANN201 - distllm.profiler.timers.RayTimer
    from distllm.config import EngineConfig
    from distllm.disagg_config import DisaggConfig
    from distllm.profiler.timers import RayTimer

    config = EngineConfig.from_kwargs(str(model_dir), block_size=16, num_kv_blocks=1024,
                                      max_num_seqs=64, max_num_batched_tokens=4096)
    return RayTimer(config, DisaggConfig(worker_rpc=rpc))


def measure(timer: object, batch: int, context_len: int, steps: int) -> dict[str, float]:
    """One sample of each metric for decode steps of `batch` x `context_len`."""
    from distllm.profiler.grid import ProfileGridConfig, decode_step

    inst = timer.decode  # type: ignore[attr-defined]
    so = decode_step(batch, context_len, ProfileGridConfig(),
                     timer.config.model.dims.vocab_size)  # type: ignore[attr-defined]
    timeout = timer.timeout_s  # type: ignore[attr-defined]
    trips = []
    for _ in range(steps):
        t0 = time.perf_counter()
        inst.submit(so).result(timeout)
        trips.append(time.perf_counter() - t0)
    wall, cpu = timer.pipelined(inst, so, steps)  # type: ignore[attr-defined]
    return {"round_trip_ms": 1e3 * statistics.median(trips), "pipelined_ms": 1e3 * wall,
            "driver_cpu_ms": 1e3 * cpu}


def bench(ns: argparse.Namespace, model_dir: Path) -> dict:
    from distllm.engine.ray_cluster import init_ray

    # NOTE: both harnesses' workers hold a Ray CPU bundle each; only one pair runs at a time
    init_ray(None, num_cpus=2 * len(RPCS))
    timers = {rpc: build_timer(model_dir, rpc) for rpc in RPCS}
    samples: dict[str, dict[int, list[dict]]] = {r: {b: [] for b in ns.batch_sizes} for r in RPCS}
    try:
        for rpc in RPCS:  # warm-up
            for b in ns.batch_sizes:
                measure(timers[rpc], b, ns.context_len, max(ns.steps // 4, 2))
        total = ns.rounds * len(RPCS) * len(ns.batch_sizes)
        with tqdm(total=total, desc="step rpc", disable=ns.no_progress) as bar:
            for k in range(ns.rounds):
                order = RPCS if k % 2 == 0 else RPCS[::-1]  # neither always goes first
                for b in ns.batch_sizes:
                    for rpc in order:
                        samples[rpc][b].append(measure(timers[rpc], b, ns.context_len,
                                                       ns.steps))
                        bar.update()
    finally:
        for t in timers.values():
            t.close()
    return samples


def summarize(samples: dict, batch_sizes: list[int]) -> list[dict]:
    rows = []
    for b in batch_sizes:
        row: dict = {"batch": b}
        for rpc in RPCS:
            for m in METRICS:
                row[f"{rpc}_{m}"] = statistics.median(s[m] for s in samples[rpc][b])
        for m in METRICS:
            row[f"ratio_{m}"] = row[f"ray_{m}"] / max(row[f"channel_{m}"], 1e-9)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'batch':>5} | {'round trip ms':>21} | {'pipelined step ms':>21} | "
            f"{'driver CPU ms/step':>21}")
    sub = f"{'':>5} | " + " | ".join(f"{'channel':>7} {'ray':>6} {'x':>6}" for _ in METRICS)
    lines = [head, sub, "-" * len(head)]
    for r in rows:
        cells = [f"{r[f'channel_{m}']:7.2f} {r[f'ray_{m}']:6.2f} {r[f'ratio_{m}']:6.2f}"
                 for m in METRICS]
        lines.append(f"{r['batch']:>5} | " + " | ".join(cells))
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
    x = range(len(rows))
    for ax, m in zip(axes, METRICS, strict=True):
        for k, rpc in enumerate(RPCS):
            ax.bar([i + 0.4 * k for i in x], [r[f"{rpc}_{m}"] for r in rows], width=0.4,
                   label=rpc)
        ax.set_xticks([i + 0.2 for i in x], [str(r["batch"]) for r in rows])
        ax.set_xlabel("decode batch")
        ax.set_title(m.replace("_", " "))
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model dir (default: the demo model)")
    p.add_argument("--workdir", default="out/demo", help="where the demo model lives")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--context-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=40, help="steps per sample")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-o", "--output", default="evaluation/results/bench_step_rpc.json")
    ns = p.parse_args(argv)
    try:
        ns.batch_sizes = [int(b) for b in ns.batch_sizes.split(",")]
    except ValueError:
        p.error(f"--batch-sizes: comma-separated integers, got {ns.batch_sizes!r}")
    for name in ("steps", "rounds", "context_len"):
        if getattr(ns, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(b < 1 for b in ns.batch_sizes):
        p.error("--batch-sizes must be >= 1")
    if ns.model is None:
        from distllm.entrypoints.demo import ensure_model

        model_dir = ensure_model(Path(ns.workdir))
    else:
        model_dir = Path(ns.model)
    samples = bench(ns, model_dir)
    rows = summarize(samples, ns.batch_sizes)
    print(table(rows))
    out = Path(ns.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in vars(ns).items() if k != "no_progress"} | {"model": str(model_dir)}
    out.write_text(json.dumps({"meta": meta, "rows": rows, "samples": samples}, indent=1) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
