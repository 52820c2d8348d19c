"""Flags of the serving benchmark and the frozen `BenchConfig` they build (validated; a bad flag
is an argparse error that names it)."""

from __future__ import annotations

import argparse
import ast
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from evaluation.arrivals import ARRIVAL_PROCESSES
from evaluation.backends import BACKENDS


@dataclass(frozen=True)
class BenchConfig:
    backend: str
    base_url: str
    dataset: str
    rounds: tuple[tuple[int, float], ...]  # (num_prompts, rate); rate inf = all at once
    model: str = ""
    endpoint: str | None = None
    tokenizer: str | None = None
    arrival: str = "poisson"
    cv: float = 1.0
    seed: int = 0
    max_concurrency: int | None = None
    ignore_eos: bool = True
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None
    attainment: float = 0.9
    sweep: bool = False
    sweep_num_prompts: int = 200
    sweep_start_rate: float = 1.0
    sweep_min_rate: float = 0.125
    sweep_max_rate: float = 1024.0
    sweep_iters: int = 6
    sweep_rel_tol: float = 0.05
    num_gpus: int | None = None
    output_dir: str = "results"
    label: str | None = None  # series name for analyze.py (default: backend + dataset)
    extra_body: dict = field(default_factory=dict)
    request_timeout_s: float = 600.0
    spin_ms: float = 2.0
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.sweep and self.ttft_slo_ms is None and self.tpot_slo_ms is None:
            raise ValueError("--sweep needs --ttft-slo-ms and/or --tpot-slo-ms")
        if not 0 < self.attainment <= 1:
            raise ValueError(f"--attainment must be in (0, 1] or (1, 100] %, got {self.attainment}")

    def meta(self) -> dict:
        keep = (
            "backend",
            "model",
            "dataset",
            "tokenizer",
            "arrival",
            "cv",
            "seed",
            "max_concurrency",
            "ignore_eos",
            "ttft_slo_ms",
            "tpot_slo_ms",
            "attainment",
            "label",
        )
        d = asdict(self)
        return {k: d[k] for k in keep}


def parse_rounds(text: str) -> tuple[tuple[int, float], ...]:
    """'[(100, 2), (100, 4)]' -> ((100, 2.0), (100, 4.0)); ast.literal_eval, never eval."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise argparse.ArgumentTypeError(f"not a Python literal: {text!r}") from e
    if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], tuple | list):
        value = [value]
    try:
        rounds = tuple((int(n), _rate(r)) for n, r in value)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(
            f"expected [(num_prompts, rate), ...], got {text!r}"
        ) from e
    if not rounds or any(n < 1 or r <= 0 for n, r in rounds):
        raise argparse.ArgumentTypeError(f"need num_prompts >= 1 and rate > 0: {text!r}")
    return rounds


def _rate(x: object) -> float:
    if isinstance(x, str) and x.lower() in ("inf", "infinity"):
        return math.inf
    return float(x)


def _positive(kind: type) -> Callable[[str], float]:
    def conv(text: str) -> float:
        value = kind(_rate(text)) if kind is float else kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return conv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark_serving", description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=sorted(BACKENDS), default="distllm")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--base-url", default=None, help="overrides --host/--port, e.g. http://h:8000")
    p.add_argument("--endpoint", default=None, help="path overriding the backend's default")
    p.add_argument("--model", default="", help="model name sent to openai/deepspeed servers")
    p.add_argument("--dataset", required=True, help="JSONL, DistServe .ds, or synthetic:<preset>")
    p.add_argument("--tokenizer", default=None, help="local HF dir (synthetic prompts, metadata)")
    p.add_argument(
        "--num-prompts-req-rates",
        type=parse_rounds,
        default=None,
        help='rounds as a Python literal, e.g. "[(100, 2), (100, 4)]"',
    )
    p.add_argument("--num-prompts", type=_positive(int), default=None)
    p.add_argument(
        "--request-rate",
        type=_positive(float),
        default=math.inf,
        help="requests/s (inf: all at once)",
    )
    p.add_argument("--arrival", choices=ARRIVAL_PROCESSES, default="poisson")
    p.add_argument("--cv", type=_positive(float), default=1.0, help="gamma arrivals' CV")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-concurrency", type=_positive(int), default=None)
    p.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generate exactly the dataset's output_len tokens",
    )
    p.add_argument("--ttft-slo-ms", type=_positive(float), default=None)
    p.add_argument("--tpot-slo-ms", type=_positive(float), default=None)
    p.add_argument(
        "--attainment",
        type=_positive(float),
        default=0.9,
        help="target share meeting the SLOs: 0.9 or 90 (%%)",
    )
    _add_sweep_args(p)
    p.add_argument("--output-dir", default="results")
    p.add_argument("--label", default=None, help="series name in .exp meta (for analyze.py)")
    p.add_argument("--extra-body", type=json.loads, default={}, help="JSON merged into requests")
    p.add_argument("--request-timeout-s", type=_positive(float), default=600.0)
    p.add_argument("--spin-ms", type=float, default=2.0, help="busy-yield window before a send")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sweep (goodput search)")
    g.add_argument("--sweep", action="store_true", help="bisect for the highest passing rate")
    g.add_argument("--sweep-start-rate", type=_positive(float), default=1.0)
    g.add_argument("--sweep-min-rate", type=_positive(float), default=0.125)
    g.add_argument("--sweep-max-rate", type=_positive(float), default=1024.0)
    g.add_argument("--sweep-iters", type=int, default=6, help="bisection rounds after bracketing")
    g.add_argument("--sweep-rel-tol", type=_positive(float), default=0.05)
    g.add_argument("--num-gpus", type=_positive(int), default=None, help="for per-GPU goodput")


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.num_prompts_req_rates is not None and ns.num_prompts is not None:
        parser.error("argument --num-prompts: not allowed with --num-prompts-req-rates")
    rounds = ns.num_prompts_req_rates or ((ns.num_prompts or 1000, ns.request_rate),)
    attainment = ns.attainment / 100 if ns.attainment > 1 else ns.attainment
    try:
        return BenchConfig(
            backend=ns.backend,
            base_url=ns.base_url or f"http://{ns.host}:{ns.port}",
            dataset=ns.dataset,
            rounds=rounds,
            model=ns.model,
            endpoint=ns.endpoint,
            tokenizer=ns.tokenizer,
            arrival=ns.arrival,
            cv=ns.cv,
            seed=ns.seed,
            max_concurrency=ns.max_concurrency,
            ignore_eos=ns.ignore_eos,
            ttft_slo_ms=ns.ttft_slo_ms,
            tpot_slo_ms=ns.tpot_slo_ms,
            attainment=attainment,
            sweep=ns.sweep,
            sweep_num_prompts=ns.num_prompts or 200,
            sweep_start_rate=ns.sweep_start_rate,
            sweep_min_rate=ns.sweep_min_rate,
            sweep_max_rate=ns.sweep_max_rate,
            sweep_iters=ns.sweep_iters,
            sweep_rel_tol=ns.sweep_rel_tol,
            num_gpus=ns.num_gpus,
            output_dir=ns.output_dir,
            label=ns.label,
            extra_body=ns.extra_body,
            request_timeout_s=ns.request_timeout_s,
            spin_ms=ns.spin_ms,
            show_progress=ns.progress,
        )
    except ValueError as e:
        parser.error(str(e))
