"""`distllm generate`: offline batch generation through the `LLM` API, with a throughput line.

Prompts come from `--prompt` (repeatable) or a dataset JSONL (`--dataset`, the schema written by
dataset/prepare_*.py; its output_len becomes each request's max_tokens unless --max-tokens is set).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from distllm.config import EngineConfig

    p = argparse.ArgumentParser(prog="distllm generate", description=__doc__.split("\n\n")[0])
    EngineConfig.add_cli_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    src.add_argument("--dataset", help="dataset JSONL: one {prompt, prompt_len, output_len} a line")
    p.add_argument("--num-prompts", type=int, default=None, help="first N requests of --dataset")
    p.add_argument("--max-tokens", type=int, default=None, help="default: 16, or the dataset's")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--sampling-seed", type=int, default=None, help="per-request sampling seed")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--output", help="write one JSON line per request here")
    return p


def _requests(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[str, int]]:
    if args.prompt:
        return [(p, 16 if args.max_tokens is None else args.max_tokens) for p in args.prompt]
    from dataset.common import read_dataset

    try:
        reqs = read_dataset(args.dataset)
    except (OSError, ValueError) as e:
        parser.error(f"--dataset: {e}")
    if args.num_prompts is not None:
        if args.num_prompts < 1:
            parser.error("--num-prompts must be >= 1")
        reqs = reqs[: args.num_prompts]
    return [(r.prompt, r.output_len if args.max_tokens is None else args.max_tokens) for r in reqs]


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    from distllm.config import EngineConfig
    from distllm.engine.llm import LLM
    from distllm.sampling_params import SamplingParams

    try:
        config = EngineConfig.from_cli_args(args)
        reqs = _requests(args, parser)
        params = [
            SamplingParams(
                max_tokens=n,
                temperature=args.temperature,
                top_p=args.top_p,
                top_k=args.top_k,
                seed=args.sampling_seed,
                ignore_eos=args.ignore_eos,
            )
            for _, n in reqs
        ]
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    llm = LLM.from_engine_config(config)
    t0 = time.perf_counter()
    outs = llm.generate([p for p, _ in reqs], params, use_tqdm=True)
    elapsed = time.perf_counter() - t0
    return _report(outs, elapsed, args.output)


def _report(outs: list, elapsed: float, output: str | None) -> dict:
    n_in = sum(len(o.prompt_token_ids) for o in outs)
    n_out = sum(len(o.token_ids) for o in outs)
    if output:
        with Path(output).open("w") as f:
            for o in outs:
                f.write(
                    json.dumps(
                        {
                            "prompt": o.prompt,
                            "text": o.text,
                            "token_ids": o.token_ids,
                            "finish_reason": o.finish_reason,
                        }
                    )
                    + "\n"
                )
    if len(outs) <= 8:
        for o in outs:
            print(f"{o.prompt!r} -> {o.text!r}")
    stats = {
        "requests": len(outs),
        "prompt_tokens": n_in,
        "output_tokens": n_out,
        "elapsed_s": elapsed,
        "output_tokens_per_s": n_out / elapsed,
        "requests_per_s": len(outs) / elapsed,
    }
    print(
        f"throughput: {stats['requests_per_s']:.2f} requests/s, "
        f"{stats['output_tokens_per_s']:.1f} output tokens/s "
        f"({len(outs)} requests, {n_in} prompt + {n_out} output tokens in {elapsed:.2f} s)"
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    run(args, parser)
    return 0


if __name__ == "__main__":
    sys.exit(main())
