"""LongBench (a folder of its `*.jsonl` files) -> dataset JSONL, DistServe-style.

Per record (seeded): context = the first `max_chars` characters of "context"; output = the first
of "answers"; the context is truncated to min(max_context - 8 - output_len, L) tokens with L
drawn uniformly in [min_prompt_len, max_prompt_len]; prompt_len is the truncated token count.
Records whose answer alone leaves no room for a prompt are dropped.
Usage: python -m dataset.prepare_longbench --input LongBench/data --tokenizer DIR --output lb.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

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


@dataclass(frozen=True)
class LongBenchFilter:
    min_prompt_len: int = 1900
    max_prompt_len: int = 2048
    max_context: int = 2048
    max_chars: int = 40000  # NOTE: DistServe's cut, only to bound tokenization time
    margin: int = 8  # DistServe keeps prompt + output <= 2040 for a 2048 context

    def __post_init__(self) -> None:
        if not 0 < self.min_prompt_len <= self.max_prompt_len:
            raise ValueError("need 0 < min_prompt_len <= max_prompt_len")
        if self.max_context <= self.margin:
            raise ValueError("max_context must exceed margin")


def find_jsonl_files(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*.jsonl") if p.is_file())


def convert_record(
    rec: dict, counter: TokenCounter, cfg: LongBenchFilter, rng: np.random.Generator
) -> DatasetRequest | None:
    answers = rec.get("answers") or [""]
    output_len = counter.count(str(answers[0]))
    ids = counter.encode(str(rec.get("context", ""))[: cfg.max_chars])
    allowed = min(
        cfg.max_context - cfg.margin - output_len,
        int(rng.integers(cfg.min_prompt_len, cfg.max_prompt_len + 1)),
    )
    if allowed <= 0:
        return None
    ids = ids[:allowed]
    return DatasetRequest(
        counter.decode(ids),
        len(ids),
        output_len,
        id=None if rec.get("_id") is None else str(rec["_id"]),
    )


def convert_longbench(
    files: list[Path], counter: TokenCounter, cfg: LongBenchFilter, seed: int
) -> list[DatasetRequest]:
    rng = np.random.default_rng(seed)
    out: list[DatasetRequest] = []
    for file in files:
        with file.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    req = convert_record(json.loads(line), counter, cfg, rng)
                    if req is not None:
                        out.append(req)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="folder with LongBench *.jsonl files")
    add_common_args(p)
    p.add_argument("--min-prompt-len", type=int, default=1900)
    p.add_argument("--max-prompt-len", type=int, default=2048)
    p.add_argument("--max-chars", type=int, default=40000)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = LongBenchFilter(
        args.min_prompt_len, args.max_prompt_len, args.max_context, args.max_chars
    )
    counter = load_tokenizer(args.tokenizer)
    files = find_jsonl_files(args.input)
    if not files:
        raise SystemExit(f"no *.jsonl files under {args.input}")
    reqs = sample_requests(
        convert_longbench(files, counter, cfg, args.seed), args.num_samples, args.seed
    )
    meta = {
        "source": "longbench",
        "input": args.input,
        "files": [f.name for f in files],
        "tokenizer": counter.name,
        "filters": asdict(cfg),
        "seed": args.seed,
    }
    write_dataset(args.output, reqs, meta)
    logger.info("wrote %d requests from %d files to %s", len(reqs), len(files), args.output)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
