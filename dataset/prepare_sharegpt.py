"""ShareGPT (`ShareGPT_V3_unfiltered_cleaned_split.json`) -> dataset JSONL, DistServe filters.

Per conversation (seeded): skip it if it has fewer than `min_turns` turns (or too few for one
prompt turn + a reply); pick `num_prompt_turns` uniformly in [min_prompt_turns,
min(turns - 1, max_prompt_turns)]; prompt = those turns joined by newlines, output = the next
turn; drop it when both lengths are below `min_len`, or when prompt_len + output_len reaches the
model's context. Usage:
    python -m dataset.prepare_sharegpt --input ShareGPT.json --tokenizer MODEL_DIR --output sg.jsonl
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
class ShareGPTFilter:
    """DistServe's defaults (0-prepare-dataset.py)."""

    min_turns: int = 3
    min_prompt_turns: int = 1
    max_prompt_turns: int = 1000
    min_len: int = 4
    max_context: int = 2048

    def __post_init__(self) -> None:
        if self.min_prompt_turns < 1:
            raise ValueError("min_prompt_turns must be >= 1 (a prompt needs a turn)")
        if self.max_prompt_turns < self.min_prompt_turns:
            raise ValueError("max_prompt_turns must be >= min_prompt_turns")
        if self.max_context <= 0:
            raise ValueError("max_context must be > 0")


def _turn_text(turn: dict) -> str:
    return str(turn.get("value", turn.get("text", "")))


def convert_sharegpt(
    conversations: list[dict], counter: TokenCounter, cfg: ShareGPTFilter, seed: int
) -> list[DatasetRequest]:
    """Apply the filters to parsed ShareGPT records (each with a "conversations" list)."""
    rng = np.random.default_rng(seed)
    out: list[DatasetRequest] = []
    for item in conversations:
        turns = item.get("conversations") or []
        n = len(turns)
        if n < cfg.min_turns or n < cfg.min_prompt_turns + 1:
            continue
        num_prompt_turns = int(
            rng.integers(cfg.min_prompt_turns, min(n - 1, cfg.max_prompt_turns) + 1)
        )
        prompt = "\n".join(_turn_text(t) for t in turns[:num_prompt_turns])
        completion = _turn_text(turns[num_prompt_turns])
        prompt_len, output_len = counter.count(prompt), counter.count(completion)
        if prompt_len < cfg.min_len and output_len < cfg.min_len:
            continue
        if prompt_len + output_len >= cfg.max_context:
            continue
        out.append(
            DatasetRequest(prompt, prompt_len, output_len, id=str(item.get("id", "")) or None)
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="ShareGPT_V3_unfiltered_cleaned_split.json")
    add_common_args(p)
    p.add_argument("--min-turns", type=int, default=3)
    p.add_argument("--min-prompt-turns", type=int, default=1)
    p.add_argument("--max-prompt-turns", type=int, default=1000)
    p.add_argument("--min-len", type=int, default=4)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = ShareGPTFilter(
        args.min_turns, args.min_prompt_turns, args.max_prompt_turns, args.min_len, args.max_context
    )
    counter = load_tokenizer(args.tokenizer)
    raw = json.loads(Path(args.input).read_text(encoding="utf-8"))
    reqs = sample_requests(
        convert_sharegpt(raw, counter, cfg, args.seed), args.num_samples, args.seed
    )
    meta = {
        "source": "sharegpt",
        "input": args.input,
        "tokenizer": counter.name,
        "filters": asdict(cfg),
        "seed": args.seed,
        "num_source_records": len(raw),
    }
    write_dataset(args.output, reqs, meta)
    logger.info("wrote %d of %d conversations to %s", len(reqs), len(raw), args.output)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
