"""Placement JSON: written by the planner (`distllm plan`), read by `distllm serve --placement`.

Schema (../shared/DESIGN.md section 4); pure Python so simdist and evaluation share it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODES = ("disaggregated", "colocated")
AFFINITIES = ("high", "low")


@dataclass(frozen=True)
class StagePlacement:
    """Parallelism of one kind of instance and how many of them run."""

    tp: int = 1
    pp: int = 1
    instances: int = 1

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "instances"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"placement: {name} must be a positive integer, got {v!r}")

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.instances


@dataclass(frozen=True)
class SLO:
    ttft_ms: float
    tpot_ms: float
    attainment: float = 0.9

    def __post_init__(self) -> None:
        if self.ttft_ms <= 0 or self.tpot_ms <= 0:
            raise ValueError("placement: slo.ttft_ms and slo.tpot_ms must be positive")
        if not 0.0 < self.attainment <= 1.0:
            raise ValueError(f"placement: slo.attainment must be in (0, 1], got {self.attainment}")


@dataclass(frozen=True)
class Placement:
    model: str
    mode: str = "disaggregated"
    hardware: str = "cpu"
    prefill: StagePlacement | None = None
    decode: StagePlacement | None = None
    colocated: StagePlacement | None = None
    num_nodes: int = 1
    gpus_per_node: int = 1
    affinity: str = "low"
    pp_cross: int = 1
    slo: SLO | None = None
    workload: dict = field(default_factory=dict)
    predicted: dict = field(default_factory=dict)
    profile: str | None = None
    planner_version: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"placement: mode must be one of {MODES}, got {self.mode!r}")
        if self.affinity not in AFFINITIES:
            raise ValueError(f"placement: affinity must be one of {AFFINITIES}")
        if self.mode == "disaggregated" and (self.prefill is None or self.decode is None):
            raise ValueError("placement: disaggregated mode needs 'prefill' and 'decode'")
        if self.mode == "colocated" and self.colocated is None:
            raise ValueError("placement: colocated mode needs 'colocated'")
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            raise ValueError("placement: num_nodes and gpus_per_node must be positive")

    @property
    def num_gpus(self) -> int:
        stages = [self.prefill, self.decode] if self.mode == "disaggregated" else [self.colocated]
        return sum(s.num_gpus for s in stages if s is not None)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> Placement:
        if not isinstance(d, dict):
            raise ValueError("placement: top level must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"placement: unknown keys {sorted(unknown)}")
        kw = dict(d)
        for key in ("prefill", "decode", "colocated"):
            if kw.get(key) is not None:
                kw[key] = StagePlacement(**kw[key])
        if kw.get("slo") is not None:
            kw["slo"] = SLO(**kw["slo"])
        return cls(**kw)


def load_placement(path: str | Path) -> Placement:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"placement file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"placement file {path} is not valid JSON: {e}") from e
    return Placement.from_dict(data)


def save_placement(placement: Placement, path: str | Path) -> None:
    Path(path).write_text(json.dumps(placement.to_dict(), indent=2) + "\n")
