"""The native skinny GEMM (distllm/ops/linear.py) against F.linear (MKL sgemm) on this CPU: each
linear of the benchmark model at 1 to 8 rows (the kernel itself, whether or not `linear` would
pick it), then whole decode steps of the model (batch x context 512) with and without it
(`linear`'s policy), side by side in one run.

    python evaluation/bench_cpu_linear.py [--threads 1] [--iters 30] [-o DIR]

Writes bench_cpu_linear.json and .png into -o and prints both tables (median ms, speedup).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.bench_cpu_kernels import time_rounds  # noqa: E402
from evaluation.bench_disagg_cpu import MODEL_SHAPE  # noqa: E402

ROWS = (1, 2, 3, 4, 6, 8)
BATCHES = (1, 2, 4, 8)


def linear_shapes() -> dict[str, tuple[int, int]]:
    """(out, in) of the benchmark model's linears (Llama: fused qkv, gate_up, down, lm_head)."""
    h, f = MODEL_SHAPE["hidden_size"], MODEL_SHAPE["intermediate_size"]
    return {"qkv": (3 * h, h), "o_proj": (h, h), "gate_up": (2 * f, h), "down": (h, f),
            "lm_head": (32000, h)}


def bench_ops(iters: int) -> list[dict]:
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, (n, k) in linear_shapes().items():
        w = torch.randn(n, k, generator=gen)
        for m in ROWS:
            x = torch.randn(m, k, generator=gen)
            (_, base), (_, ours) = time_rounds(  # NOTE: interleaved, medians in seconds
                [lambda f=f, x=x, w=w: f(x, w, None)
                 for f in (F.linear, torch.ops.distllm_C.skinny_linear)], iters)
            rows.append({"linear": name, "out": n, "in": k, "rows": m,
                         "f_linear_ms": base * 1e3, "skinny_ms": ours * 1e3,
                         "speedup": base / ours, "skinny_gb_s": n * k * 4 / ours / 1e9})
    return rows


def bench_steps(iters: int) -> list[dict]:
    from distllm.config import EngineConfig
    from distllm.ops import linear as linear_mod
    from distllm.profiler.grid import ProfileGridConfig, decode_step
    from distllm.profiler.timers import InProcessTimer
    from distllm.testing import make_tiny_model

    model_dir = make_tiny_model(Path(tempfile.mkdtemp()) / "m", arch="llama", seed=0,
                                **MODEL_SHAPE)
    config = EngineConfig.from_kwargs(str(model_dir), block_size=16, num_kv_blocks=1024,
                                      max_num_seqs=64, max_num_batched_tokens=2048,
                                      max_model_len=2048)
    timer, grid, rows = InProcessTimer(config, 1), ProfileGridConfig(), []

    def step_with(enabled: bool, step: object) -> None:
        linear_mod.ENABLED = enabled
        timer.time_step(step)

    try:
        for batch in BATCHES:
            step = decode_step(batch, 512, grid, 500)
            # NOTE: time_rounds interleaves the two, so drift hits both alike
            (_, base), (_, ours) = time_rounds(
                [lambda e=e, s=step: step_with(e, s) for e in (False, True)], iters)
            rows.append({"batch": batch, "context": 512, "f_linear_step_ms": base * 1e3,
                         "skinny_step_ms": ours * 1e3, "speedup": base / ours})
    finally:
        linear_mod.ENABLED = True
    return rows


def print_tables(report: dict) -> None:
    print(f"{'linear':>8} {'out x in':>12} {'rows':>4} {'F.linear ms':>11} {'skinny ms':>9} "
          f"{'speedup':>7} {'GB/s':>6}")
    for r in report["ops"]:
        print(f"{r['linear']:>8} {r['out']:>6}x{r['in']:<5} {r['rows']:>4} "
              f"{r['f_linear_ms']:>11.3f} {r['skinny_ms']:>9.3f} {r['speedup']:>7.2f} "
              f"{r['skinny_gb_s']:>6.1f}")
    print(f"\ndecode step of the model (context 512)\n{'batch':>5} {'F.linear ms':>11} "
          f"{'skinny ms':>9} {'speedup':>7}")
    for r in report["steps"]:
        print(f"{r['batch']:>5} {r['f_linear_step_ms']:>11.2f} {r['skinny_step_ms']:>9.2f} "
              f"{r['speedup']:>7.2f}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    lm = [r for r in report["ops"] if r["linear"] == "lm_head"]
    ax1.plot([r["rows"] for r in lm], [r["f_linear_ms"] for r in lm], "o-", label="F.linear")
    ax1.plot([r["rows"] for r in lm], [r["skinny_ms"] for r in lm], "o-", label="skinny")
    ax1.set(xlabel="rows of x", ylabel="ms", title="lm_head (32000 x 512, fp32)")
    steps = report["steps"]
    ax2.plot([r["batch"] for r in steps], [r["f_linear_step_ms"] for r in steps], "o-",
             label="F.linear")
    ax2.plot([r["batch"] for r in steps], [r["skinny_step_ms"] for r in steps], "o-",
             label="skinny")
    ax2.set(xlabel="decode batch", ylabel="ms", title="decode step (context 512)")
    for ax in (ax1, ax2):
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--iters", type=int, default=30,
                   help="interleaved rounds per comparison (figures are medians)")
    p.add_argument("-o", "--output-dir", default="evaluation/results")
    args = p.parse_args(argv)
    if args.threads < 1 or args.iters < 1:
        p.error("--threads and --iters must be >= 1")
    import torch

    from distllm import ops

    if not ops.HAS_NATIVE:
        sys.exit("distllm._C is not built: nothing to compare (run `make setup`)")
    torch.set_num_threads(args.threads)
    report = {"threads": args.threads, "isa": ops.native_isa(), "ops": bench_ops(args.iters),
              "steps": bench_steps(args.iters)}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_cpu_linear.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "bench_cpu_linear.png")
    print_tables(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
