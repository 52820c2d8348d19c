"""CPU decode-attention microbenchmark: achieved K/V read bandwidth vs memory-copy bandwidth.

`measure_decode_attention_bandwidth()` measures, in one run, (1) a large tensor copy
(`dst.copy_(src)`, far larger than the caches) and (2) `distllm.ops.paged_decode_attention` over a
batch of sequences with scattered KV blocks, and reports the bytes of K and V the kernel must read,
its GB/s and that as a fraction of the copy bandwidth (issue goal: >= 0.5), plus the pure-torch
reference's time. Copy bandwidth counts read + write bytes (STREAM "Copy"); the one-way figure
(bytes copied per second) is reported too. Importing this module has no side effects.

    python -m evaluation.bench_cpu_kernels --output out/bench_cpu_kernels.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

GOAL_FRACTION = 0.5
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DecodeBenchConfig:
    """A decode-attention workload; defaults: a Llama-style GQA layer, 8 q heads per KV head."""

    num_seqs: int = 32
    context_len: int = 2048
    num_kv_heads: int = 2
    group: int = 8  # query heads per KV head
    head_dim: int = 128
    block_size: int = 16
    dtype: str = "float32"
    iters: int = 20
    copy_mb: int = 512  # size of the copied tensor; src + dst use twice this
    num_threads: int = 0  # 0 keeps torch's setting
    with_reference: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_seqs", "context_len", "num_kv_heads", "group", "head_dim", "iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.block_size not in (8, 16, 32):
            raise ValueError(f"block_size must be 8, 16 or 32, got {self.block_size}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.copy_mb < 64:
            raise ValueError("copy_mb must be >= 64 so that the copy exceeds the caches")

    @property
    def kv_bytes(self) -> int:
        """Bytes of K and V the decode step must read."""
        per_token = 2 * self.num_kv_heads * self.head_dim * _DTYPES[self.dtype].itemsize
        return self.num_seqs * self.context_len * per_token


def time_rounds(fns: list[Callable[[], object]], iters: int) -> list[tuple[float, float]]:
    """(best, median) wall seconds of each fn; one warm-up, then iters rounds running each fn once.

    NOTE: interleaving the functions exposes them to the same background load (shared machines).
    """
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(iters):
        for fn, ts in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [(min(ts), statistics.median(ts)) for ts in times]


def _copy_fn(copy_mb: int) -> Callable[[], object]:
    src = torch.ones(copy_mb * 2**20 // 4, dtype=torch.float32)  # far larger than the caches
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def _copy_figures(num_bytes: int, best: float, median: float) -> dict:
    return {
        "copy_bytes": num_bytes,
        "copy_gbps": 2 * num_bytes / best / 1e9,
        "copy_one_way_gbps": num_bytes / best / 1e9,
        "copy_median_gbps": 2 * num_bytes / median / 1e9,
    }


def measure_copy_bandwidth(copy_mb: int = 512, iters: int = 5) -> dict:
    """Bandwidth of `dst.copy_(src)` on a tensor of copy_mb MiB (read + write and one-way)."""
    ((best, median),) = time_rounds([_copy_fn(copy_mb)], iters)
    return _copy_figures(copy_mb * 2**20, best, median)


def _decode_inputs(cfg: DecodeBenchConfig) -> tuple:
    gen = torch.Generator().manual_seed(cfg.seed)
    dtype = _DTYPES[cfg.dtype]
    blocks_per_seq = -(-cfg.context_len // cfg.block_size)
    num_blocks = cfg.num_seqs * blocks_per_seq
    shape = (num_blocks, cfg.num_kv_heads, cfg.block_size, cfg.head_dim)
    key_cache = torch.randn(shape, generator=gen).to(dtype)  # [blocks, kv_heads, bs, head_dim]
    value_cache = torch.randn(shape, generator=gen).to(dtype)
    # NOTE: blocks are shuffled, as in a long-running server's block pool
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    block_tables = perm.view(cfg.num_seqs, blocks_per_seq)  # [num_seqs, blocks_per_seq]
    context_lens = torch.full((cfg.num_seqs,), cfg.context_len, dtype=torch.int32)
    num_heads = cfg.num_kv_heads * cfg.group
    query = torch.randn(cfg.num_seqs, num_heads, cfg.head_dim, generator=gen).to(dtype)
    return query, key_cache, value_cache, block_tables, context_lens, cfg.head_dim**-0.5


def _time_decode_and_copy(cfg: DecodeBenchConfig, inputs: tuple) -> tuple[dict, dict]:
    from distllm import ops
    from distllm.ops import reference

    out = torch.empty_like(inputs[0])
    decode = lambda: ops.paged_decode_attention(*inputs, out=out)  # noqa: E731
    (best, median), copy = time_rounds([decode, _copy_fn(cfg.copy_mb)], cfg.iters)
    result = {
        "decode_ms": best * 1e3,
        "decode_median_ms": median * 1e3,
        "native": ops.HAS_NATIVE,
        "isa": ops.native_isa(),
    }
    if cfg.with_reference:
        expected = reference.paged_decode_attention(*inputs)  # also the warm-up
        start = time.perf_counter()
        reference.paged_decode_attention(*inputs)
        ref_best = time.perf_counter() - start
        result["reference_ms"] = ref_best * 1e3
        result["speedup_vs_reference"] = ref_best / best
        result["max_abs_err_vs_reference"] = (out.float() - expected.float()).abs().max().item()
    return result, _copy_figures(cfg.copy_mb * 2**20, *copy)


def measure_decode_attention_bandwidth(
    config: DecodeBenchConfig | None = None, **overrides: object
) -> dict:
    """Copy bandwidth and decode-attention bandwidth measured in the same run.

    Args:
        config: the workload (default DecodeBenchConfig()); `overrides` replace its fields.
    Returns:
        dict with decode_gbps, copy_gbps (read + write), fraction_of_copy, meets_goal,
        copy_one_way_gbps, fraction_of_one_way_copy, decode_ms, reference_ms, kv_bytes, ...
    """
    cfg = dataclasses.replace(config or DecodeBenchConfig(), **overrides)
    saved_threads = torch.get_num_threads()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    try:
        with torch.inference_mode():
            timing, copy = _time_decode_and_copy(cfg, _decode_inputs(cfg))
    finally:
        torch.set_num_threads(saved_threads)
    decode_gbps = cfg.kv_bytes / (timing["decode_ms"] / 1e3) / 1e9
    return {
        "decode_gbps": decode_gbps,
        "copy_gbps": copy["copy_gbps"],
        "fraction_of_copy": decode_gbps / copy["copy_gbps"],
        "goal_fraction": GOAL_FRACTION,
        "meets_goal": decode_gbps / copy["copy_gbps"] >= GOAL_FRACTION,
        "copy_one_way_gbps": copy["copy_one_way_gbps"],
        "fraction_of_one_way_copy": decode_gbps / copy["copy_one_way_gbps"],
        "fraction_of_copy_median": timing["decode_ms"]
        / timing["decode_median_ms"]
        * decode_gbps
        / copy["copy_median_gbps"],
        "kv_bytes": cfg.kv_bytes,
        **timing,
        "copy": copy,
        "threads": cfg.num_threads or saved_threads,
        "config": dataclasses.asdict(cfg),
    }


def _print_table(rows: list[dict]) -> None:
    head = (
        f"{'dtype':<9}{'thr':>4}{'KV MB':>8}{'decode ms':>11}{'GB/s':>8}{'copy GB/s':>11}"
        f"{'frac':>7}{'frac 1-way':>11}{'ref ms':>9}{'speedup':>9}"
    )
    print(head)
    for r in rows:
        ref = r.get("reference_ms", float("nan"))
        print(
            f"{r['config']['dtype']:<9}{r['threads']:>4}{r['kv_bytes'] / 2**20:>8.0f}"
            f"{r['decode_ms']:>11.2f}{r['decode_gbps']:>8.1f}{r['copy_gbps']:>11.1f}"
            f"{r['fraction_of_copy']:>7.2f}{r['fraction_of_one_way_copy']:>11.2f}"
            f"{ref:>9.1f}{r.get('speedup_vs_reference', float('nan')):>9.1f}"
        )
    print(f"goal: decode GB/s >= {GOAL_FRACTION} x copy GB/s (copy counts read + write bytes)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = DecodeBenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated KV dtypes")
    p.add_argument("--threads", default="0", help="comma-separated thread counts (0 = default)")
    for name in (
        "num_seqs",
        "context_len",
        "num_kv_heads",
        "group",
        "head_dim",
        "block_size",
        "iters",
        "copy_mb",
    ):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--no-reference", action="store_true", help="skip the slow torch reference")
    p.add_argument("--output", default="out/bench_cpu_kernels.json", help="JSON result path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k in DecodeBenchConfig.__dataclass_fields__}
    base = DecodeBenchConfig(**fields, with_reference=not args.no_reference)
    rows = [
        measure_decode_attention_bandwidth(base, dtype=dt, num_threads=int(th))
        for th in args.threads.split(",")
        for dt in args.dtypes.split(",")
    ]
    _print_table(rows)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
