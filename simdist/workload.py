"""Workloads: request lengths from a dataset JSONL (DESIGN.md section 4) or a synthetic preset,
times an arrival process (poisson, gamma, fixed, or the trace's own `arrival_s`). Seeded.

Arrival gaps are drawn once at unit rate and scaled by 1/rate, so the planner's rate sweeps see
the same requests in the same order at every rate (common random numbers).
"""
from __future__ import annotations

import json
import marshal
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARRIVALS = ("poisson", "gamma", "fixed", "trace")
# name -> (prompt mean, prompt sigma, output mean, output sigma) of a lognormal; shaped after
# the datasets in DistServe's evaluation (ShareGPT chat, HumanEval code, LongBench summaries).
PRESETS: dict[str, tuple[float, float, float, float]] = {
    "sharegpt": (755.0, 0.9, 200.0, 1.0),
    "humaneval": (171.0, 0.4, 98.0, 0.6),
    "longbench": (1738.0, 0.5, 90.0, 0.8),
}


@dataclass(frozen=True)
class Workload:
    """Request lengths plus unit-rate arrival gaps (or trace arrival times)."""

    prompt_lens: tuple[int, ...]
    output_lens: tuple[int, ...]
    unit_gaps: tuple[float, ...]  # inter-arrival gaps at 1 req/s; first gap applies to request 0
    trace_arrivals: tuple[float, ...] | None = None
    name: str = "workload"
    arrival: str = "poisson"

    def __post_init__(self) -> None:
        n = len(self.prompt_lens)
        if n == 0 or len(self.output_lens) != n or len(self.unit_gaps) != n:
            raise ValueError("workload: need >= 1 request and equal-length columns")
        if min(self.prompt_lens) < 1 or min(self.output_lens) < 1:
            raise ValueError("workload: prompt_len and output_len must be >= 1")
        if self.trace_arrivals is not None and len(self.trace_arrivals) != n:
            raise ValueError("workload: trace_arrivals must have one time per request")

    def __len__(self) -> int:
        return len(self.prompt_lens)

    def arrivals(self, rate: float | None) -> list[float]:
        """Arrival times (s) at `rate` req/s; a trace workload replays its own times."""
        if self.arrival == "trace":
            if self.trace_arrivals is None:
                raise ValueError("workload: arrival 'trace' needs arrival_s in the dataset")
            t0 = self.trace_arrivals[0]
            return [t - t0 for t in self.trace_arrivals]
        if rate is None or not rate > 0:
            raise ValueError(f"workload: rate must be positive, got {rate}")
        out, t, inv = [], 0.0, 1.0 / rate
        for g in self.unit_gaps:
            out.append(t)
            t += g * inv
        return out


def unit_gaps(kind: str, n: int, rng: np.random.Generator, cv: float = 1.0) -> list[float]:
    """Inter-arrival gaps with mean 1: poisson (exponential), gamma (shape 1/cv^2), fixed."""
    if kind == "poisson":
        return rng.exponential(1.0, n).tolist()
    if kind == "gamma":
        if cv <= 0:
            raise ValueError("--arrival-cv must be positive for gamma arrivals")
        shape = 1.0 / (cv * cv)
        return rng.gamma(shape, 1.0 / shape, n).tolist()
    if kind in ("fixed", "trace"):
        return [1.0] * n
    raise ValueError(f"unknown arrival process {kind!r}; choose from {ARRIVALS}")


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, n: int) -> np.ndarray:
    mu = math.log(mean) - sigma * sigma / 2
    return np.rint(rng.lognormal(mu, sigma, n)).astype(np.int64)


def preset_lengths(name: str, n: int, rng: np.random.Generator,
                   max_seq_len: int = 2048) -> tuple[list[int], list[int]]:
    """Synthetic lengths. NOTE: output is clipped to [1, max_seq_len/2] and the prompt to
    [1, max_seq_len - output] so every request fits the model's context (documented truncation)."""
    if name not in PRESETS:
        raise ValueError(f"unknown workload preset {name!r}; choose from {sorted(PRESETS)}")
    pm, ps, om, osd = PRESETS[name]
    outs = np.clip(_lognormal(rng, om, osd, n), 1, max_seq_len // 2)
    prompts = np.clip(_lognormal(rng, pm, ps, n), 1, max_seq_len - outs)
    return prompts.tolist(), outs.tolist()


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a dataset JSONL; each needs integer prompt_len and output_len. DistServe's `.ds`
    files (marshal of {"dataset_name", "reqs": [(prompt, prompt_len, output_len)]}) also work."""
    if str(path).endswith(".ds"):
        with open(path, "rb") as f:
            data = marshal.load(f)
        return [{"prompt": p, "prompt_len": int(pl), "output_len": int(ol)}
                for p, pl, ol in data["reqs"]]
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("prompt_len"), int) or not isinstance(row.get("output_len"),
                                                                            int):
                raise ValueError(f"{path}:{i}: need integer prompt_len and output_len")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no requests")
    return rows


def make_workload(source: str, num_requests: int, seed: int = 0, arrival: str = "poisson",
                  cv: float = 1.0, max_seq_len: int = 2048) -> Workload:
    """`source` is a preset name or a JSONL path. A JSONL is sampled (with replacement when
    shorter than num_requests; in file order for trace replay)."""
    rng = np.random.default_rng(seed)
    if source in PRESETS:
        if arrival == "trace":
            raise ValueError("--arrival trace needs a JSONL workload with arrival_s")
        prompts, outs = preset_lengths(source, num_requests, rng, max_seq_len)
        trace = None
    else:
        rows = read_jsonl(source)
        if arrival == "trace":
            if any("arrival_s" not in r for r in rows):
                raise ValueError(f"{source}: --arrival trace needs arrival_s on every line")
            rows = rows[:num_requests]
            trace = tuple(float(r["arrival_s"]) for r in rows)
        else:
            idx = rng.choice(len(rows), num_requests, replace=len(rows) < num_requests)
            rows, trace = [rows[int(i)] for i in idx], None
        prompts = [r["prompt_len"] for r in rows]
        outs = [r["output_len"] for r in rows]
    gaps = unit_gaps(arrival, len(prompts), rng, cv)
    return Workload(tuple(prompts), tuple(outs), tuple(gaps), trace, Path(source).name, arrival)
