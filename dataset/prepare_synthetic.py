"""Synthetic datasets (no real files needed): fixed / uniform / lognormal lengths, and presets
shaped like the real datasets, written in the common JSONL schema.

Length specs: `fixed:N`, `uniform:LO:HI` (inclusive), `lognormal:MEAN:STD` (clipped to
[1, max_context - 1]). Presets (approximate shapes of DistServe's prepared datasets with a
Llama/OPT tokenizer; NOT exact published figures, override them with explicit specs):
    sharegpt   prompt lognormal 755 +- 650,  output lognormal 200 +- 215
    humaneval  prompt lognormal 171 +- 75,   output lognormal 98 +- 60
    longbench  prompt uniform 1800..1990,    output lognormal 100 +- 100
Prompts are random words that each count as one token with `--tokenizer` (so prompt_len is exact;
it is re-counted and recorded as counted); without a tokenizer one word counts as one token.
Usage: python -m dataset.prepare_synthetic --preset sharegpt --num-requests 500 --output sg.jsonl
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.common import DatasetRequest, TokenCounter, load_tokenizer, write_dataset

logger = logging.getLogger(__name__)

WORDS = (
    "the of and to in is was for on that with as it at by from this be are or an have "
    "not but had his they you were her she which their all one there been if more when "
    "will would who so no out up into do can time two may then its only new some could "
    "these other than first any like now my over such our man me even most made after "
    "also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own "
    "see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used "
    "take three"
).split()


@dataclass(frozen=True)
class LengthDist:
    kind: str  # fixed | uniform | lognormal
    a: float  # fixed: N; uniform: LO; lognormal: mean
    b: float = 0.0  # uniform: HI; lognormal: std

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise ValueError(f"unknown length distribution {self.kind!r}")
        if self.a < 1 or (self.kind == "uniform" and self.b < self.a):
            raise ValueError(f"bad parameters for {self.kind}: {self.a}, {self.b}")

    @classmethod
    def parse(cls, spec: str) -> LengthDist:
        """`fixed:N`, `uniform:LO:HI` or `lognormal:MEAN:STD`."""
        kind, *nums = spec.split(":")
        try:
            vals = [float(x) for x in nums]
        except ValueError as e:
            raise ValueError(f"bad length spec {spec!r}") from e
        if len(vals) != (1 if kind == "fixed" else 2):
            raise ValueError(f"bad length spec {spec!r}")
        return cls(kind, *vals)

    def sample(self, n: int, rng: np.random.Generator, max_len: int) -> np.ndarray:
        if self.kind == "fixed":
            x = np.full(n, self.a)
        elif self.kind == "uniform":
            x = rng.integers(int(self.a), int(self.b) + 1, size=n).astype(float)
        else:
            sigma2 = math.log(1.0 + (self.b / self.a) ** 2)
            x = rng.lognormal(math.log(self.a) - sigma2 / 2, math.sqrt(sigma2), size=n)
        return np.clip(np.rint(x), 1, max_len).astype(np.int64)


PRESETS: dict[str, tuple[LengthDist, LengthDist]] = {
    "sharegpt": (LengthDist("lognormal", 755, 650), LengthDist("lognormal", 200, 215)),
    "humaneval": (LengthDist("lognormal", 171, 75), LengthDist("lognormal", 98, 60)),
    "longbench": (LengthDist("uniform", 1800, 1990), LengthDist("lognormal", 100, 100)),
}


class PromptBuilder:
    """Makes prompts of a requested token count from words that are one token each."""

    def __init__(self, counter: TokenCounter | None) -> None:
        self.counter = counter
        self.base = counter.count("") if counter else 0  # special tokens (BOS) per prompt
        self.words = [w for w in WORDS if self._is_single(w)] if counter else list(WORDS)
        if not self.words:
            raise ValueError("no single-token filler words for this tokenizer")

    def _is_single(self, word: str) -> bool:
        return self.counter.count(f"{word} {word} {word} {word}") - self.base == 4

    def build(self, num_tokens: int, rng: np.random.Generator) -> tuple[str, int]:
        """(prompt, its counted length); the length equals num_tokens whenever possible."""
        n_words = max(1, num_tokens - self.base)
        idx = rng.integers(0, len(self.words), size=n_words)
        text = " ".join(self.words[i] for i in idx)
        return text, self.counter.count(text) if self.counter else n_words


def generate(
    num_requests: int,
    prompt: LengthDist,
    output: LengthDist,
    seed: int,
    counter: TokenCounter | None = None,
    max_context: int = 2048,
) -> list[DatasetRequest]:
    """Seeded synthetic requests; prompt_len + output_len < max_context."""
    if num_requests < 1 or max_context < 3:
        raise ValueError("need num_requests >= 1 and max_context >= 3")
    rng = np.random.default_rng(seed)
    prompt_lens = prompt.sample(num_requests, rng, max_context - 2)
    output_lens = output.sample(num_requests, rng, max_context - 2)
    output_lens = np.minimum(output_lens, max_context - 1 - prompt_lens)
    builder = PromptBuilder(counter)
    reqs = []
    for i, (pl, ol) in enumerate(zip(prompt_lens.tolist(), output_lens.tolist(), strict=True)):
        text, counted = builder.build(pl, rng)
        reqs.append(DatasetRequest(text, counted, max(1, ol), id=f"syn-{i}"))
    return reqs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--prompt-len", default=None, help="length spec, e.g. lognormal:755:650")
    p.add_argument("--output-len", default=None, help="length spec, e.g. fixed:128")
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--tokenizer", default=None, help="local HF dir of the target model")
    p.add_argument("--output", required=True, help="output JSONL path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-context", type=int, default=2048)
    return p


def resolve_dists(
    preset: str | None, prompt_spec: str | None, output_spec: str | None
) -> tuple[LengthDist, LengthDist]:
    base = PRESETS[preset] if preset else (None, None)
    prompt = LengthDist.parse(prompt_spec) if prompt_spec else base[0]
    output = LengthDist.parse(output_spec) if output_spec else base[1]
    if prompt is None or output is None:
        raise ValueError("give --preset or both --prompt-len and --output-len")
    return prompt, output


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        prompt, output = resolve_dists(args.preset, args.prompt_len, args.output_len)
    except ValueError as e:
        parser.error(str(e))
    counter = load_tokenizer(args.tokenizer) if args.tokenizer else None
    reqs = generate(args.num_requests, prompt, output, args.seed, counter, args.max_context)
    meta = {
        "source": "synthetic",
        "preset": args.preset,
        "prompt_dist": asdict(prompt),
        "output_dist": asdict(output),
        "tokenizer": counter.name if counter else None,
        "seed": args.seed,
        "filters": {"max_context": args.max_context},
    }
    write_dataset(args.output, reqs, meta)
    logger.info("wrote %d synthetic requests to %s", len(reqs), args.output)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
