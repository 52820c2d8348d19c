"""Step contention of the demo model on this host: a prefill step alone vs while another process
runs decode steps back to back, and the reverse (distllm.profiler.contention), at a few step
sizes; writes JSON with simdist's coefficients (host keys contention_prefill / _decode).

    flock /tmp/distllm-measure.lock python evaluation/bench_contention.py \
        [--model DIR] [-o evaluation/results/contention_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (prompt_len, decode_batch, context_len): the demo workload's typical steps and a larger pair
POINTS = ((96, 4, 192), (192, 16, 256), (384, 32, 320))


def main(argv: list[str] | None = None) -> int:
    from distllm.config import EngineConfig
    from distllm.profiler.contention import ContentionConfig, measure_contention

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model dir (default: the demo model)")
    p.add_argument("--workdir", default="out/demo")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("-o", "--output", default="evaluation/results/contention_cpu.json")
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if ns.model is None:
        from distllm.entrypoints.demo import ensure_model

        ns.model = str(ensure_model(Path(ns.workdir)))
    config = EngineConfig.from_kwargs(ns.model, num_kv_blocks=2048, max_num_batched_tokens=4096)
    points = []
    for prompt_len, batch, ctx in POINTS:
        cfg = ContentionConfig(prompt_len=prompt_len, decode_batch=batch, context_len=ctx,
                               repeats=ns.repeats, blocks=ns.blocks)
        points.append(measure_contention(config, cfg))
    out = {f"contention_{k}": statistics.median(pt[f"contention_{k}"] for pt in points)
           for k in ("prefill", "decode")}
    out["points"] = points
    Path(ns.output).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.output).write_text(json.dumps(out, indent=1) + "\n")
    for pt in points:
        m = pt["measured"]
        sys.stdout.write(
            f"prefill {m['prompt_len']:>4} tok: {m['prefill_alone_ms']:6.1f} -> "
            f"{m['prefill_contended_ms']:6.1f} ms (c {pt['contention_prefill']:.2f}) | decode "
            f"{m['decode_batch']:>2}x{m['context_len']}: {m['decode_alone_ms']:6.1f} -> "
            f"{m['decode_contended_ms']:6.1f} ms (c {pt['contention_decode']:.2f}) | other load "
            f"{m['other_cores']:.2f} cores\n")
    median = {k: round(v, 3) for k, v in out.items() if k != "points"}
    sys.stdout.write(f"median: {json.dumps(median)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
