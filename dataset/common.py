"""Shared dataset plumbing: the request record, the JSONL + `.meta.json` writer/reader, length
statistics and the token counter every `prepare_<source>.py` uses.

JSONL schema (one request per line): {"prompt": str, "prompt_len": int, "output_len": int}
plus optional "arrival_s" (trace replay, seconds from the start) and "id".
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DatasetRequest:
    """One benchmark request. Lengths are counted by the target model's tokenizer."""

    prompt: str
    prompt_len: int
    output_len: int
    arrival_s: float | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        if self.prompt_len < 0 or self.output_len < 0:
            raise ValueError(f"lengths must be >= 0, got {self.prompt_len}, {self.output_len}")
        if self.arrival_s is not None and self.arrival_s < 0:
            raise ValueError(f"arrival_s must be >= 0, got {self.arrival_s}")

    def to_json(self) -> dict:
        out: dict = {
            "prompt": self.prompt,
            "prompt_len": self.prompt_len,
            "output_len": self.output_len,
        }
        if self.arrival_s is not None:
            out["arrival_s"] = self.arrival_s
        if self.id is not None:
            out["id"] = self.id
        return out

    @classmethod
    def from_json(cls, d: dict) -> DatasetRequest:
        arrival = d.get("arrival_s")
        return cls(
            prompt=str(d["prompt"]),
            prompt_len=int(d["prompt_len"]),
            output_len=int(d["output_len"]),
            arrival_s=None if arrival is None else float(arrival),
            id=None if d.get("id") is None else str(d["id"]),
        )


class TokenCounter:
    """Counts tokens the way the target model's server will.

    `encode` adds the model's special tokens (e.g. BOS), as `AutoTokenizer(text).input_ids`
    does in DistServe's preparation script, so lengths match what the server sees."""

    def __init__(
        self,
        encode: Callable[[str], list[int]],
        decode: Callable[[list[int]], str],
        vocab_size: int,
        name: str,
    ) -> None:
        self._encode, self._decode = encode, decode
        self.vocab_size = vocab_size
        self.name = name

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text))

    def count(self, text: str) -> int:
        return len(self._encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._decode(list(ids))


def load_tokenizer(path: str | Path) -> TokenCounter:
    """Load the tokenizer of a local HF model dir (through `distllm.tokenizer.Tokenizer`, which
    applies the model's special-token rules) or of a bare tokenizer.json file."""
    p = Path(path)
    if p.is_dir():
        from distllm.tokenizer import Tokenizer as ModelTokenizer

        tok = ModelTokenizer.from_pretrained(p)
        return TokenCounter(
            lambda t: tok.encode(t, add_special_tokens=True),
            lambda ids: tok.decode(ids, skip_special_tokens=True),
            tok.vocab_size,
            str(path),
        )
    if not p.is_file():
        raise FileNotFoundError(f"no tokenizer at {path!s} (a local HF dir is expected)")
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(p))
    return TokenCounter(
        lambda t: raw.encode(t, add_special_tokens=True).ids,
        lambda ids: raw.decode(ids, skip_special_tokens=True),
        raw.get_vocab_size(),
        str(path),
    )


def _describe(values: list[int]) -> dict[str, float]:
    if not values:
        return {
            "mean": math.nan,
            "std": math.nan,
            "min": math.nan,
            "max": math.nan,
            "p50": math.nan,
            "p90": math.nan,
            "p99": math.nan,
        }
    from distllm.metrics import percentile

    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {
        "mean": mean,
        "std": std,
        "min": min(values),
        "max": max(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
    }


def length_stats(reqs: Sequence[DatasetRequest]) -> dict[str, dict[str, float]]:
    """Mean/std/min/max/p50/p90/p99 of prompt and output lengths (population std)."""
    return {
        "prompt_len": _describe([r.prompt_len for r in reqs]),
        "output_len": _describe([r.output_len for r in reqs]),
    }


def meta_path(path: str | Path) -> Path:
    return Path(str(path) + ".meta.json")


def write_dataset(path: str | Path, reqs: Iterable[DatasetRequest], meta: dict) -> Path:
    """Write `reqs` as JSONL and a sidecar `<path>.meta.json` (meta + counts + length stats)."""
    reqs = list(reqs)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for r in reqs:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    full_meta = {
        "schema_version": SCHEMA_VERSION,
        **meta,
        "num_requests": len(reqs),
        "stats": length_stats(reqs),
    }
    meta_path(out).write_text(json.dumps(full_meta, indent=2, default=str) + "\n")
    return out


def read_jsonl(path: str | Path) -> list[DatasetRequest]:
    reqs = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                reqs.append(DatasetRequest.from_json(json.loads(line)))
            except (KeyError, ValueError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: bad dataset record ({e})") from e
    return reqs


def read_dataset(path: str | Path) -> list[DatasetRequest]:
    """Read a dataset: DistServe `.ds` (marshal, local files only) or our JSONL."""
    if str(path).endswith(".ds"):
        from dataset.distserve_format import read_ds

        return read_ds(path)
    return read_jsonl(path)


def read_meta(path: str | Path) -> dict | None:
    mp = meta_path(path)
    return json.loads(mp.read_text()) if mp.is_file() else None


def add_common_args(parser: argparse.ArgumentParser, need_tokenizer: bool = True) -> None:
    """Flags every prepare script shares."""
    parser.add_argument(
        "--tokenizer",
        required=need_tokenizer,
        help="local HF model dir (or tokenizer.json) of the target model",
    )
    parser.add_argument("--output", required=True, help="output JSONL path")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument(
        "--max-context",
        type=int,
        default=2048,
        help="drop requests whose prompt_len + output_len reaches this",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="keep a seeded random sample of this many requests",
    )


def sample_requests(reqs: list[DatasetRequest], n: int | None, seed: int) -> list[DatasetRequest]:
    """A seeded sample without replacement, in source order (all of them when n is None or
    at least len(reqs))."""
    import numpy as np

    if n is None or n >= len(reqs):
        return list(reqs)
    idx = np.sort(np.random.default_rng(seed).choice(len(reqs), size=n, replace=False))
    return [reqs[i] for i in idx]
