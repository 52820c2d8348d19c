"""CUDA kernel roofline benchmark (H100/H200): decode attention, KV append, same-GPU migration.

One run measures the ceilings first (copy bandwidth: `dst.copy_(src)` of 2 GiB, read + write
bytes; bf16 8192^3 matmul TFLOP/s), then per shape: median time, bytes moved, TB/s, fraction of
the measured copy bandwidth and of the spec bandwidth, next to torch's
scaled_dot_product_attention on already-gathered KV (its best case) and torch index copies.
Every timed launch follows an L2 flush (a write of 2x the L2 size) and is timed with CUDA events
(a GPU sleep before the start event hides the Python launch latency).
Goals (issue 7): decode >= 0.8, KV append >= 0.6, migration >= 0.8 of measured bandwidth;
(issue 8) causal prefill >= 2K tokens: >= 0.5 of the measured bf16 matmul TFLOP/s, next to SDPA.

    python -m evaluation.bench_kernels --output out/bench_kernels.json

Exit codes: 0 measured; 1 a goal was missed and --strict was given; 2 nothing measured (no CUDA
GPU, or distllm._C built without its CUDA kernels), with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

GOALS = {"decode": 0.8, "append": 0.6, "migrate": 0.8}
# device name substring -> (spec HBM TB/s, spec dense bf16 TFLOP/s); first match wins
SPECS = [
    ("H200", 4.8, 989.0),
    ("H100 NVL", 3.9, 835.0),
    ("H100 PCIe", 2.0, 756.0),
    ("H100", 3.35, 989.0),
    ("A100-SXM4-80GB", 2.039, 312.0),
    ("A100 80GB PCIe", 1.935, 312.0),
    ("A100", 1.555, 312.0),
]


@dataclass(frozen=True)
class DecodeShape:
    """A decode-attention step of one layer; contexts are uniform so SDPA can batch them."""

    name: str
    num_seqs: int
    context_len: int
    num_kv_heads: int = 8
    group: int = 4  # query heads per KV head
    head_dim: int = 128
    block_size: int = 16

    def __post_init__(self) -> None:
        if self.num_seqs < 1 or self.context_len < 1 or self.group < 1:
            raise ValueError(f"{self.name}: num_seqs, context_len and group must be >= 1")

    @property
    def kv_bytes(self) -> int:  # bf16 K and V every context token
        return 2 * self.num_seqs * self.context_len * self.num_kv_heads * self.head_dim * 2


DECODE_SHAPES = [
    DecodeShape("llama3-8b b1 x 64K", 1, 65536),
    DecodeShape("llama3-8b b16 x 4K", 16, 4096),
    DecodeShape("llama3-8b b64 x 2K", 64, 2048),
    DecodeShape("llama3-8b b256 x 512", 256, 512),
    DecodeShape("llama3-70b/tp8 b32 x 4K gqa8", 32, 4096, num_kv_heads=1, group=8),
    DecodeShape("opt-13b mha b32 x 2K", 32, 2048, num_kv_heads=40, group=1),
    DecodeShape("d64 b64 x 2K bs8", 64, 2048, num_kv_heads=8, group=4, head_dim=64, block_size=8),
    DecodeShape(
        "d256 b16 x 4K bs32", 16, 4096, num_kv_heads=4, group=2, head_dim=256, block_size=32
    ),
]


def spec_of(device_name: str) -> tuple[float | None, float | None]:
    """(spec TB/s, spec bf16 TFLOP/s) of a GPU by name, (None, None) when unknown."""
    for key, bandwidth, tflops in SPECS:
        if key in device_name:
            return bandwidth, tflops
    return None, None


class Timer:
    """Median CUDA-event time of fn over iters launches, each after an L2 flush."""

    def __init__(self, iters: int) -> None:
        l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
        self.flush = torch.empty(max(2 * l2_bytes, 2**24), dtype=torch.uint8, device="cuda")
        self.iters = iters

    def __call__(self, fn: Callable[[], object]) -> float:
        fn()  # warm-up (allocations, lazy init)
        events = [
            [torch.cuda.Event(enable_timing=True) for _ in range(2)] for _ in range(self.iters)
        ]
        for start, end in events:
            self.flush.zero_()
            # NOTE: keeps the GPU busy while Python enqueues the op, so the events time the op
            # and not the launch gap.
            torch.cuda._sleep(200_000)
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events) / 1e3  # seconds


def _copy_tbs(timer: Timer) -> float:
    src = torch.ones(2**30, dtype=torch.bfloat16, device="cuda")  # 2 GiB
    dst = torch.empty_like(src)
    return 2 * src.numel() * 2 / timer(lambda: dst.copy_(src)) / 1e12  # read + write bytes


def _matmul_tflops(timer: Timer, n: int = 8192) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    return 2 * n**3 / timer(lambda: torch.matmul(a, b)) / 1e12


def measure_ceilings(timer: Timer) -> dict:
    return {"copy_tbs": _copy_tbs(timer), "matmul_bf16_tflops": _matmul_tflops(timer)}


def _row(kind: str, name: str, seconds: float, num_bytes: int, ceil: dict, **extra) -> dict:
    tbs = num_bytes / seconds / 1e12
    spec = ceil.get("spec_tbs")
    return {
        "kind": kind,
        "shape": name,
        "time_us": seconds * 1e6,
        "bytes": num_bytes,
        "tbs": tbs,
        "frac_measured": tbs / ceil["copy_tbs"],
        "frac_spec": tbs / spec if spec else None,
        "goal": GOALS.get(kind),
        **extra,
    }


def _decode_inputs(s: DecodeShape, gen: torch.Generator) -> tuple:
    blocks_per_seq = -(-s.context_len // s.block_size)
    num_blocks = s.num_seqs * blocks_per_seq
    shape = (num_blocks, s.num_kv_heads, s.block_size, s.head_dim)
    key_cache = torch.randn(shape, dtype=torch.bfloat16, device="cuda", generator=gen)
    value_cache = torch.randn(shape, dtype=torch.bfloat16, device="cuda", generator=gen)
    perm = torch.randperm(num_blocks, device="cuda", generator=gen).to(torch.int32)
    tables = perm.view(s.num_seqs, blocks_per_seq)  # scattered blocks, as in a live block pool
    lens = torch.full((s.num_seqs,), s.context_len, dtype=torch.int32, device="cuda")
    query = torch.randn(
        s.num_seqs,
        s.num_kv_heads * s.group,
        s.head_dim,
        dtype=torch.bfloat16,
        device="cuda",
        generator=gen,
    )
    return query, key_cache, value_cache, tables, lens, s.head_dim**-0.5


def _gathered(cache: torch.Tensor, tables: torch.Tensor, s: DecodeShape) -> torch.Tensor:
    blocks = cache[tables.long()]  # [b, nb, kvh, bs, d]
    kv = blocks.permute(0, 2, 1, 3, 4).reshape(s.num_seqs, s.num_kv_heads, -1, s.head_dim)
    return kv[:, :, : s.context_len].contiguous()  # [b, kvh, ctx, d]


def bench_decode(s: DecodeShape, timer: Timer, ceil: dict) -> dict:
    from distllm import ops

    gen = torch.Generator(device="cuda").manual_seed(0)
    query, kc, vc, tables, lens, scale = _decode_inputs(s, gen)
    out = torch.empty_like(query)
    seconds = timer(lambda: ops.paged_decode_attention(query, kc, vc, tables, lens, scale, out))
    k, v = _gathered(kc, tables, s), _gathered(vc, tables, s)
    q4 = query.unsqueeze(2)  # [b, h, 1, d]

    def sdpa() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(
            q4, k, v, scale=scale, enable_gqa=s.group > 1
        )

    sdpa_s = timer(sdpa)
    max_err = (sdpa().squeeze(2).float() - out.float()).abs().max().item()
    num_bytes = s.kv_bytes + 2 * query.numel() * 2 + tables.numel() * 4
    return _row(
        "decode",
        s.name,
        seconds,
        num_bytes,
        ceil,
        config=asdict(s),
        sdpa_gathered_us=sdpa_s * 1e6,
        speedup_vs_sdpa=sdpa_s / seconds,
        max_abs_err_vs_sdpa=max_err,
    )


def bench_append(num_tokens: int, timer: Timer, ceil: dict, kvh: int = 8, d: int = 128) -> dict:
    from distllm import ops

    shape = (65536, kvh, 16, d)  # 1M slots, 2 GiB per cache: larger than any L2
    kc = torch.zeros(shape, dtype=torch.bfloat16, device="cuda")
    vc = torch.zeros_like(kc)
    qkv = torch.randn(num_tokens, (4 + 2) * kvh, d, dtype=torch.bfloat16, device="cuda")
    key, value = qkv[:, 4 * kvh : 5 * kvh], qkv[:, 5 * kvh :]  # strided views, as in a layer
    slots = torch.randperm(shape[0] * 16, device="cuda")[:num_tokens]
    seconds = timer(lambda: ops.reshape_and_cache(key, value, kc, vc, slots))
    torch_s = timer(lambda: _torch_append(key, value, kc, vc, slots))
    num_bytes = 2 * 2 * num_tokens * kvh * d * 2 + slots.numel() * 8  # K, V read + write
    return _row(
        "append",
        f"{num_tokens} tokens kvh{kvh} d{d}",
        seconds,
        num_bytes,
        ceil,
        torch_index_put_us=torch_s * 1e6,
    )


def _torch_append(key, value, kc, vc, slots) -> None:
    blocks, offsets = slots // kc.shape[2], slots % kc.shape[2]
    kc[blocks, :, offsets] = key
    vc[blocks, :, offsets] = value


def bench_migrate(
    num_blocks: int, heads: tuple[int, int], timer: Timer, ceil: dict, num_layers: int = 32
) -> dict:
    """One request's KV (all layers, K and V) between two cache sets on one GPU."""
    from distllm import ops
    from distllm.distributed import kv_transport

    shape = (4096, 8, 16, 128)
    src = [torch.randn(shape, dtype=torch.bfloat16, device="cuda") for _ in range(2 * num_layers)]
    dst = [
        torch.zeros(shape[0], heads[1] - heads[0], *shape[2:], dtype=torch.bfloat16, device="cuda")
        for _ in range(2 * num_layers)
    ]
    src_ids = torch.randperm(shape[0], device="cuda")[:num_blocks]
    dst_ids = torch.randperm(shape[0], device="cuda")[:num_blocks]
    seconds = timer(lambda: ops.migrate_blocks(src, dst, src_ids, dst_ids, heads, 0))
    pairs = list(zip(src[::2], src[1::2], strict=True))
    ids = src_ids.tolist()
    torch_s = timer(lambda: kv_transport.gather_slab(pairs, ids, (0, num_layers), heads))
    chunk = (heads[1] - heads[0]) * shape[2] * shape[3] * 2
    num_bytes = 2 * (2 * num_layers * num_blocks * chunk)  # read + write
    name = f"{num_blocks} blocks x {num_layers} layers heads {heads[0]}:{heads[1]}"
    return _row("migrate", name, seconds, num_bytes, ceil, torch_gather_slab_us=torch_s * 1e6)


def bench_prefill(
    lens: list[int], heads: tuple[int, int], head_dim: int, timer: Timer, ceil: dict
) -> dict:
    """Causal prefill of a ragged batch (issue 8: >= 0.5 of the bf16 matmul ceiling)."""
    from distllm import ops

    num_heads, num_kv_heads = heads
    n = sum(lens)
    mk = lambda h: torch.randn(n, h, head_dim, dtype=torch.bfloat16, device="cuda")  # noqa: E731
    q, k, v = mk(num_heads), mk(num_kv_heads), mk(num_kv_heads)
    starts = [0, *torch.tensor(lens).cumsum(0).tolist()]
    cu = torch.tensor(starts, dtype=torch.int32, device="cuda")
    out = torch.empty_like(q)
    seconds = timer(lambda: ops.prefill_attention(q, k, v, cu, head_dim**-0.5, out=out))
    flops = sum(2 * x * x * num_heads * head_dim for x in lens)  # causal: half of 4 n^2 h d
    # NOTE: SDPA gets per-sequence [1, heads, len, dim] views with K/V heads expanded beforehand
    # (untimed), so its flash backend is eligible.
    group = num_heads // num_kv_heads
    per_seq = [
        (
            q[a:b].transpose(0, 1).unsqueeze(0),
            k[a:b].repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0),
            v[a:b].repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0),
        )
        for a, b in zip(starts[:-1], starts[1:], strict=True)
    ]

    def sdpa() -> None:
        for qi, ki, vi in per_seq:
            torch.nn.functional.scaled_dot_product_attention(qi, ki, vi, is_causal=True)

    sdpa_s = timer(sdpa)
    tflops = flops / seconds / 1e12
    return {
        "kind": "prefill",
        "shape": f"{lens} h{num_heads}/{num_kv_heads} d{head_dim}",
        "time_us": seconds * 1e6,
        "tflops": tflops,
        "frac_matmul": tflops / ceil["matmul_bf16_tflops"],
        "goal": 0.5,
        "sdpa_us": sdpa_s * 1e6,
        "speedup_vs_sdpa": sdpa_s / seconds,
    }


def _print_table(ceil: dict, rows: list[dict]) -> None:
    print(
        f"device {ceil['device']}: copy {ceil['copy_tbs']:.2f} TB/s (spec "
        f"{ceil.get('spec_tbs')}), bf16 matmul {ceil['matmul_bf16_tflops']:.0f} TFLOP/s (spec "
        f"{ceil.get('spec_tflops')})"
    )
    print(
        f"{'kind':8} {'shape':42} {'us':>9} {'MB':>9} {'TB/s':>6} {'meas':>5} {'spec':>5} "
        f"{'goal':>5}  torch side by side"
    )
    for r in (r for r in rows if r["kind"] == "prefill"):
        print(
            f"prefill  {r['shape']:42} {r['time_us']:9.1f} us {r['tflops']:7.1f} TFLOP/s "
            f"{r['frac_matmul']:5.2f} of matmul (goal 0.50)  sdpa_us={r['sdpa_us']:.1f}"
        )
    for r in (r for r in rows if r["kind"] != "prefill"):
        side = {k: v for k, v in r.items() if k.endswith("_us") and k != "time_us"}
        side_txt = " ".join(f"{k}={v:.1f}" for k, v in side.items())
        spec = f"{r['frac_spec']:.2f}" if r["frac_spec"] else "-"
        print(
            f"{r['kind']:8} {r['shape']:42} {r['time_us']:9.1f} {r['bytes'] / 1e6:9.1f} "
            f"{r['tbs']:6.2f} {r['frac_measured']:5.2f} {spec:>5} {r['goal'] or 0:5.2f}  "
            f"{side_txt}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="out/bench_kernels.json", help="JSON result path")
    parser.add_argument("--iters", type=int, default=20, help="timed launches per shape")
    parser.add_argument("--spec-tbs", type=float, default=None, help="override spec TB/s")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    return parser.parse_args(argv)


def unavailable_reason() -> str | None:
    """Why nothing can be measured here, or None."""
    if not torch.cuda.is_available():
        return "bench_kernels: no CUDA GPU (torch.cuda.is_available() is False); nothing measured"
    from distllm import ops

    if not ops.HAS_CUDA_NATIVE:
        return (
            "bench_kernels: distllm._C has no CUDA kernels (build with "
            "DISTLLM_TARGET_DEVICE=cuda); nothing measured"
        )
    return None


def run(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    timer = Timer(args.iters)
    name = torch.cuda.get_device_name(0)
    spec_tbs, spec_tflops = spec_of(name)
    ceil = {
        "device": name,
        "spec_tbs": args.spec_tbs or spec_tbs,
        "spec_tflops": spec_tflops,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        **measure_ceilings(timer),
    }
    rows = [bench_decode(s, timer, ceil) for s in DECODE_SHAPES]
    rows += [bench_append(n, timer, ceil) for n in (256, 8192, 65536)]
    rows += [
        bench_migrate(nb, h, timer, ceil)
        for nb, h in ((128, (0, 8)), (128, (0, 4)), (1024, (0, 8)))
    ]
    rows += [
        bench_prefill(lens, heads, d, timer, ceil)
        for lens, heads, d in (
            ([2048], (32, 8), 128),
            ([8192], (32, 8), 128),
            ([2048] * 4, (32, 8), 128),
            ([4096], (32, 32), 64),
        )
    ]
    return ceil, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    ceil, rows = run(args)
    _print_table(ceil, rows)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"meta": ceil, "rows": rows}, indent=2) + "\n")
    missed = [
        r for r in rows if r["goal"] and r.get("frac_measured", r.get("frac_matmul")) < r["goal"]
    ]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
