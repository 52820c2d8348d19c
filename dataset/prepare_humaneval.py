"""HumanEval (`HumanEval.jsonl`: prompt -> canonical_solution) -> dataset JSONL.

Drops problems whose prompt_len + output_len reaches the model's context (DistServe's filter).
DistServe repeats the 164 problems 10 times (`--repeat 10`); the default keeps them once.
Usage: python -m dataset.prepare_humaneval --input HumanEval.jsonl --tokenizer DIR --output he.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.common import (
    DatasetRequest,
    TokenCounter,
    add_common_args,
    load_tokenizer,
    sample_requests,
    write_dataset,
)

logger = logging.getLogger(__name__)


def convert_humaneval(
    problems: list[dict], counter: TokenCounter, max_context: int, repeat: int = 1
) -> list[DatasetRequest]:
    """One request per problem (prompt -> canonical_solution), repeated `repeat` times."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    kept: list[DatasetRequest] = []
    for prob in problems:
        prompt, answer = str(prob["prompt"]), str(prob["canonical_solution"])
        prompt_len, output_len = counter.count(prompt), counter.count(answer)
        if prompt_len + output_len >= max_context:
            continue
        kept.append(DatasetRequest(prompt, prompt_len, output_len, id=prob.get("task_id")))
    return kept * repeat


def read_jsonl_records(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="HumanEval.jsonl")
    add_common_args(p)
    p.add_argument("--repeat", type=int, default=1, help="copies of the set (DistServe: 10)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    counter = load_tokenizer(args.tokenizer)
    problems = read_jsonl_records(args.input)
    reqs = convert_humaneval(problems, counter, args.max_context, args.repeat)
    reqs = sample_requests(reqs, args.num_samples, args.seed)
    meta = {
        "source": "humaneval",
        "input": args.input,
        "tokenizer": counter.name,
        "filters": {"max_context": args.max_context, "repeat": args.repeat},
        "seed": args.seed,
        "num_source_records": len(problems),
    }
    write_dataset(args.output, reqs, meta)
    logger.info("wrote %d requests to %s", len(reqs), args.output)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
