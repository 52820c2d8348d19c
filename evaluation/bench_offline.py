"""Offline throughput: distllm's `LLM.generate` (continuous batching, paged KV, C++ kernels) vs
transformers' `generate` in static padded batches, on the same CPU, model and requests; plus the CPU
decode-attention kernel's bandwidth as a fraction of a copy bandwidth measured in the same run.

    python evaluation/bench_offline.py [--num-requests 200] [--max-len 1024] [-o OUT.json]

Prints a table and writes JSON. Lengths are ShareGPT-shaped (lognormal prompt and output lengths
with ShareGPT's published medians and spread), scaled so prompt + output <= --max-len.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# ShareGPT (DistServe's filtered split): median prompt ~ 180 tokens, output ~ 150, heavy right tail.
PROMPT_MEDIAN, PROMPT_SIGMA = 180.0, 1.0
OUTPUT_MEDIAN, OUTPUT_SIGMA = 150.0, 0.9
MODEL_SHAPE = dict(
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)


def sharegpt_shaped_lengths(n: int, max_len: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        p = int(rng.lognormal(np.log(PROMPT_MEDIAN), PROMPT_SIGMA))
        o = int(rng.lognormal(np.log(OUTPUT_MEDIAN), OUTPUT_SIGMA))
        if p >= 4 and o >= 4 and p + o <= max_len:
            out.append((p, o))
    return out


def make_prompts(lengths: list[tuple[int, int]], vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed + 1)
    # NOTE: avoid ids 0-9 (special tokens of the tiny tokenizer) so no prompt holds an EOS.
    return [rng.integers(10, vocab, size=p).tolist() for p, _ in lengths]


def run_distllm(model_dir: Path, prompts: list[list[int]], outs: list[int], args) -> float:
    from distllm import LLM, SamplingParams

    llm = LLM(
        model=str(model_dir),
        dtype=args.dtype,
        num_kv_blocks=args.num_kv_blocks,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    params = [SamplingParams(max_tokens=o, temperature=0.0, ignore_eos=True) for o in outs]
    llm.generate(prompts[:2], params[:2], use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    res = llm.generate(prompts, params, use_tqdm=True)
    elapsed = time.perf_counter() - t0
    assert [len(r.token_ids) for r in res] == outs, "distllm produced the wrong output lengths"
    return elapsed


def run_transformers(model_dir: Path, prompts: list[list[int]], outs: list[int], args) -> float:
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    pad = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in tqdm(range(0, len(prompts), args.hf_batch_size), desc="transformers"):
            batch, want = prompts[i : i + args.hf_batch_size], outs[i : i + args.hf_batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max(want),
                min_new_tokens=max(want),
                do_sample=False,
                pad_token_id=pad,
            )
    return time.perf_counter() - t0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-requests", type=int, default=200)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--hf-batch-size", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--num-kv-blocks", type=int, default=4096)
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("-o", "--output", default="out/bench_offline.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    from distllm.testing import make_tiny_model

    lengths = sharegpt_shaped_lengths(args.num_requests, args.max_len, args.seed)
    outs = [o for _, o in lengths]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(
            Path(tmp) / "model", arch="llama3", seed=args.seed, **MODEL_SHAPE
        )
        vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        prompts = make_prompts(lengths, vocab, args.seed)
        t_ours = run_distllm(model_dir, prompts, outs, args)
        t_hf = None if args.skip_transformers else run_transformers(model_dir, prompts, outs, args)
    from evaluation.bench_cpu_kernels import measure_decode_attention_bandwidth

    kernel = measure_decode_attention_bandwidth()
    report = _report(args, lengths, t_ours, t_hf, kernel)
    _print_table(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _report(args, lengths, t_ours: float, t_hf: float | None, kernel: dict) -> dict:
    n_out = sum(o for _, o in lengths)
    ours = n_out / t_ours
    hf = None if t_hf is None else n_out / t_hf
    return {
        "config": vars(args) | {"model": MODEL_SHAPE, "torch_threads": torch.get_num_threads()},
        "workload": {
            "num_requests": len(lengths),
            "prompt_tokens": sum(p for p, _ in lengths),
            "output_tokens": n_out,
        },
        "distllm": {"elapsed_s": t_ours, "output_tokens_per_s": ours},
        "transformers": None if hf is None else {"elapsed_s": t_hf, "output_tokens_per_s": hf},
        "speedup": None if hf is None else ours / hf,
        "decode_attention_kernel": kernel,
    }


def _print_table(r: dict) -> None:
    w = r["workload"]
    print(
        f"\nworkload: {w['num_requests']} requests, {w['prompt_tokens']} prompt tokens, "
        f"{w['output_tokens']} output tokens"
    )
    print(f"{'engine':<28}{'elapsed s':>12}{'output tok/s':>16}")
    print(
        f"{'distllm LLM.generate':<28}{r['distllm']['elapsed_s']:>12.2f}"
        f"{r['distllm']['output_tokens_per_s']:>16.1f}"
    )
    if r["transformers"]:
        print(
            f"{'transformers generate':<28}{r['transformers']['elapsed_s']:>12.2f}"
            f"{r['transformers']['output_tokens_per_s']:>16.1f}"
        )
        print(f"speedup: {r['speedup']:.2f}x (goal >= 2x)")
    k = r["decode_attention_kernel"]
    print(f"decode attention: {json.dumps(k, default=str)[:300]}")


if __name__ == "__main__":
    sys.exit(main())
