"""Serving benchmark (also `distllm bench`): drive a server over HTTP with a dataset on an arrival
process, stream every answer, and write one `.exp` per round plus a console summary.

    python -m evaluation.benchmark_serving --backend distllm --port 8000 \\
        --dataset sharegpt.jsonl --num-prompts-req-rates "[(100, 2), (100, 4)]" \\
        --ttft-slo-ms 200 --tpot-slo-ms 100 --output-dir results/
    ... --sweep --num-prompts 200      # bisection for the highest rate meeting --attainment

--dataset takes our JSONL, a DistServe `.ds` file (local only), or `synthetic:<preset>`
(sharegpt | humaneval | longbench, see dataset/prepare_synthetic.py). A round of N prompts draws
N requests from the dataset with the seed (without replacement when N <= the dataset size);
`--arrival trace` replays the dataset's `arrival_s` in file order instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.common import DatasetRequest, read_dataset, read_meta
from evaluation.arrivals import ArrivalConfig, arrival_schedule
from evaluation.backends import Backend, create_backend
from evaluation.bench_cli import BenchConfig, parse_args
from evaluation.exp_format import build_exp, build_summary, format_summary, write_exp
from evaluation.load_runner import RunnerConfig, run_round
from evaluation.sweep import SweepConfig, SweepResult, find_goodput

logger = logging.getLogger(__name__)


def dataset_meta(cfg: BenchConfig) -> dict | None:
    """The dataset's sidecar `.meta.json` (source, tokenizer, filters, stats), if any."""
    if cfg.dataset.startswith("synthetic:"):
        return {"source": "synthetic", "preset": cfg.dataset.split(":", 1)[1], "seed": cfg.seed}
    return read_meta(cfg.dataset)


def load_requests(cfg: BenchConfig) -> list[DatasetRequest]:
    if cfg.dataset.startswith("synthetic:"):
        from dataset.common import load_tokenizer
        from dataset.prepare_synthetic import PRESETS, generate

        preset = cfg.dataset.split(":", 1)[1]
        if preset not in PRESETS:
            raise ValueError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
        counter = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
        n = max(n for n, _ in cfg.rounds) if cfg.rounds else cfg.sweep_num_prompts
        return generate(max(n, 1), *PRESETS[preset], seed=cfg.seed, counter=counter)
    return read_dataset(cfg.dataset)


def pick_requests(
    reqs: list[DatasetRequest], n: int, seed: int, trace: bool
) -> list[DatasetRequest]:
    """N requests: a seeded draw (with replacement only if N > len); trace keeps file order."""
    if not reqs:
        raise ValueError("the dataset is empty")
    if trace:
        if n > len(reqs):
            raise ValueError(f"--arrival trace needs {n} records, the dataset has {len(reqs)}")
        return reqs[:n]
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(reqs), size=n, replace=n > len(reqs))
    return [reqs[i] for i in idx]


async def run_one_round(
    cfg: BenchConfig,
    backend: Backend,
    reqs: list[DatasetRequest],
    num_prompts: int,
    rate: float,
    tag: str = "",
) -> dict:
    """One round at `rate`: sample, schedule, send, summarise, write the `.exp`. Returns summary."""
    trace = cfg.arrival == "trace"
    chosen = pick_requests(reqs, num_prompts, cfg.seed, trace)
    arrival = ArrivalConfig(cfg.arrival, rate, cfg.cv, cfg.seed)
    schedule = arrival_schedule(
        arrival, num_prompts, [r.arrival_s for r in chosen] if trace else None
    )
    runner = RunnerConfig(
        cfg.max_concurrency,
        cfg.ignore_eos,
        cfg.spin_ms / 1e3,
        cfg.request_timeout_s,
        cfg.show_progress,
    )
    result = await run_round(backend, chosen, schedule, runner, desc=f"rate {rate:g}")
    summary = build_summary(result, cfg.ttft_slo_ms, cfg.tpot_slo_ms, backend.is_streaming)
    meta = {
        **cfg.meta(),
        "rate": rate,
        "num_prompts": num_prompts,
        "url": backend.url,
        "streaming": backend.is_streaming,
        "dataset_meta": dataset_meta(cfg),
    }
    name = f"{cfg.backend}-{tag}{num_prompts}-{rate:g}.exp"
    path = write_exp(Path(cfg.output_dir) / name, build_exp(meta, result, summary))
    sys.stdout.write(format_summary(summary, f"{cfg.backend} rate={rate:g} n={num_prompts}") + "\n")
    sys.stdout.write(f"wrote {path}\n")
    return summary


async def run_sweep(cfg: BenchConfig, backend: Backend, reqs: list[DatasetRequest]) -> SweepResult:
    async def measure(rate: float) -> float:
        summary = await run_one_round(cfg, backend, reqs, cfg.sweep_num_prompts, rate, "sweep-")
        if not summary["completed"]:
            raise RuntimeError(f"no request succeeded at rate {rate:g}; is {backend.url} up?")
        value = summary.get("attainment")
        return 0.0 if value is None or math.isnan(value) else float(value)

    sweep_cfg = SweepConfig(
        cfg.attainment,
        cfg.sweep_start_rate,
        cfg.sweep_min_rate,
        cfg.sweep_max_rate,
        cfg.sweep_iters,
        cfg.sweep_rel_tol,
    )
    result = await find_goodput(measure, sweep_cfg)
    out = {
        **result.to_json(),
        "meta": cfg.meta(),
        "num_gpus": cfg.num_gpus,
        "per_gpu_goodput_rps": result.goodput_rps / cfg.num_gpus if cfg.num_gpus else None,
    }
    path = Path(cfg.output_dir) / f"{cfg.backend}-sweep.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    sys.stdout.write(format_sweep(result) + f"\nwrote {path}\n")
    return result


def format_sweep(result: SweepResult) -> str:
    lines = [f"{'rate (req/s)':>14} {'attainment':>11}"]
    lines += [f"{r:>14.4g} {100 * a:>10.1f}%" for r, a in result.points]
    lines.append(
        f"goodput (highest rate with attainment >= {100 * result.target:g}%): "
        f"{result.goodput_rps:.4g} req/s (max passing measured: {result.max_passing_rate})"
    )
    return "\n".join(lines)


async def run_benchmark(cfg: BenchConfig) -> int:
    backend = create_backend(cfg.backend, cfg.base_url, cfg.model, cfg.endpoint, cfg.extra_body)
    reqs = load_requests(cfg)
    if cfg.sweep:
        try:
            await run_sweep(cfg, backend, reqs)
        except RuntimeError as e:
            logger.error("sweep aborted: %s", e)
            return 1
        return 0
    failed_rounds = 0
    for num_prompts, rate in cfg.rounds:
        summary = await run_one_round(cfg, backend, reqs, num_prompts, rate)
        if not summary["completed"]:
            logger.error("no request succeeded at rate %g; is %s up?", rate, backend.url)
            failed_rounds += 1
    return 1 if failed_rounds else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m evaluation.benchmark_serving` and `distllm bench`."""
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run_benchmark(cfg))


if __name__ == "__main__":
    raise SystemExit(main())
