"""Latency profile: the simulator's cost model (DESIGN.md section 4), JSON I/O, and the importer
for DistServe's published A100 files.

    prefill_ms = a + b*sum(l) + c*sum(l^2)        per model, per TP
    decode_ms  = a + b*sum(ctx) + c*batch         small / large batch regimes
plus a per-iteration overhead (iteration_ms + per_token_ms * tokens; decode_step_ms on decode
iterations only: the engine loop's fixed cost per step fitted by simdist.calibrate), PP dividing
the time, KV bytes per token, KV capacity in tokens per (tp, pp), and interconnect bandwidths.

A TP entry may also carry the measured decode steps it was fitted to, `decode_points`
[[batch, sum_ctx, ms], ...] (`distllm profile` writes them): at pp = 1 simdist then
interpolates them (DecodeTable) instead of the two linear regimes, whose least-squares fit
leaves ~10 % at some grid points (on the demo model's CPU profile -6 % at batch 8, where a
served decode sweep matched the points within ~5 %). Absent: the regimes, bit for bit as before.
"""
from __future__ import annotations

import bisect
import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from simdist.hardware import HARDWARE, MODELS, resolve_model_name

logger = logging.getLogger(__name__)
FORMAT = "distllm-profile-v1"
FALLBACK_INTERCONNECT = {"nvlink_gb_s": 10.0, "network_gb_s": 1.0}
PROFILE_DIR = Path(__file__).parent / "profiles"
# Shipped profiles by short name (files under simdist/profiles/).
SHIPPED = {"distserve-a100": "a100-80g.distserve.json", "vllm-a100": "a100-80g.vllm.json",
           "cpu-demo": "cpu-demo.json"}  # cpu-demo: `distllm demo`'s model, `distllm profile`


class DecodeTable:
    """Measured decode steps on a grid of batch size x context per request, interpolated:
    piecewise linear in the mean context per request along each measured batch size, then
    linear in the batch size between the two measured sizes around it. Beyond the measured
    batch sizes or contexts the regime model (`model(batch, sum_ctx)`, seconds) carries on
    from the nearest edge point, scaled to meet it there."""

    __slots__ = ("batches", "ctx", "sec", "model")

    def __init__(self, points: list, model) -> None:  # noqa: ANN001 - (int, int) -> float
        curves: dict[int, list[tuple[float, float]]] = {}
        for batch, sum_ctx, ms in points:
            if batch < 1 or sum_ctx < 0 or ms <= 0:
                raise ValueError(f"decode_points: bad point {[batch, sum_ctx, ms]}")
            curves.setdefault(int(batch), []).append((sum_ctx / batch, ms * 1e-3))
        if not curves:
            raise ValueError("decode_points is empty")
        self.batches = sorted(curves)
        self.ctx = [[c for c, _ in sorted(curves[b])] for b in self.batches]
        self.sec = [[t for _, t in sorted(curves[b])] for b in self.batches]
        self.model = model

    def _along(self, i: int, ctx: float) -> float:
        """Step of measured batch size i at `ctx` tokens per request."""
        b, xs, ys = self.batches[i], self.ctx[i], self.sec[i]
        if ctx <= xs[0] or ctx >= xs[-1]:
            j = 0 if ctx <= xs[0] else len(xs) - 1
            if ctx == xs[j]:
                return ys[j]
            return ys[j] * self.model(b, ctx * b) / self.model(b, xs[j] * b)
        k = bisect.bisect_right(xs, ctx)
        x0, x1 = xs[k - 1], xs[k]
        return ys[k - 1] + (ys[k] - ys[k - 1]) * (ctx - x0) / (x1 - x0)

    def __call__(self, batch: int, sum_ctx: int) -> float:
        bs, ctx = self.batches, sum_ctx / batch
        if batch <= bs[0] or batch >= bs[-1]:
            i = 0 if batch <= bs[0] else len(bs) - 1
            t = self._along(i, ctx)
            if batch == bs[i]:
                return t
            return t * self.model(batch, sum_ctx) / self.model(bs[i], ctx * bs[i])
        k = bisect.bisect_right(bs, batch)
        if bs[k - 1] == batch:
            return self._along(k - 1, ctx)
        t0, t1 = self._along(k - 1, ctx), self._along(k, ctx)
        return t0 + (t1 - t0) * (batch - bs[k - 1]) / (bs[k] - bs[k - 1])


class StageCost:
    """Iteration times (seconds) of one instance configuration (model, tp, pp). Hot path."""

    __slots__ = ("pa", "pb", "pc", "sa", "sb", "sc", "la", "lb", "lc", "threshold", "pp",
                 "it_s", "tok_s", "stage_s", "dstep_s", "table")

    def __init__(self, coeffs: dict, pp: int, overhead: dict) -> None:
        ms = 1e-3
        self.pa, self.pb, self.pc = (x * ms for x in coeffs["prefill"])
        self.sa, self.sb, self.sc = (x * ms for x in coeffs["decode_small"])
        self.la, self.lb, self.lc = (x * ms for x in coeffs["decode_large"])
        self.threshold = int(coeffs.get("decode_threshold", 95))
        self.pp = pp
        self.it_s = overhead.get("iteration_ms", 0.0) * ms
        self.tok_s = overhead.get("per_token_ms", 0.0) * ms
        self.stage_s = overhead.get("prefill_stage_ms", 0.0) * ms
        # NOTE: 0.0 when absent, and (a + it_s) + 0.0 == a + it_s: bit-identical steps
        self.dstep_s = overhead.get("decode_step_ms", 0.0) * ms
        # measured decode steps (pp = 1 only: the table holds whole steps, not stages)
        points = coeffs.get("decode_points")
        self.table = DecodeTable(points, self._regimes) if points and pp == 1 else None

    def _regimes(self, batch: int, sum_ctx: int) -> float:
        """The two-regime linear decode step (seconds), without overheads, at pp = 1."""
        if batch < self.threshold:
            return self.sa + self.sb * sum_ctx + self.sc * batch
        return self.la + self.lb * sum_ctx + self.lc * batch

    def prefill_stage(self, sum_l: int, sum_l2: int) -> float:
        """Time one pipeline stage is busy with a prefill batch (latency = pp * this)."""
        t = self.pa + self.pb * sum_l + self.pc * sum_l2 + self.it_s + self.tok_s * sum_l
        return t / self.pp + self.stage_s

    def decode(self, batch: int, sum_ctx: int) -> float:
        """One decode iteration over `batch` requests holding `sum_ctx` KV tokens. With PP the
        batch is split in pp micro-batches that keep every stage busy: a + (b*S + c*B) / pp."""
        if self.table is not None:
            return (self.table(batch, sum_ctx) + self.it_s + self.dstep_s
                    + self.tok_s * sum_ctx)
        if batch < self.threshold:
            a, b, c = self.sa, self.sb, self.sc
        else:
            a, b, c = self.la, self.lb, self.lc
        fixed = a + self.it_s + self.dstep_s
        return fixed + (b * sum_ctx + c * batch + self.tok_s * sum_ctx) / self.pp

    def prefill_extra(self, sum_l: int, sum_l2: int) -> float:
        """Marginal time of prefill tokens added to a decode iteration (chunked prefill,
        recompute after preemption): the prefill cost without its fixed term."""
        return (self.pb * sum_l + self.pc * sum_l2 + self.tok_s * sum_l) / self.pp


@dataclass
class LatencyProfile:
    """Cost model of one hardware + engine. `models[name]` = {"kv_bytes_per_token": int,
    "tp": {"<tp>": {prefill, decode_small, decode_large, decode_threshold}},
    "kv_capacity_tokens": {"<tp>x<pp>": int}}."""

    hardware: str
    models: dict[str, dict]
    engine: str = "distllm"
    overhead: dict[str, float] = field(default_factory=dict)  # iteration_ms, decode_step_ms, ...
    interconnect: dict[str, float] = field(default_factory=dict)  # nvlink_gb_s, network_gb_s
    source: str = ""
    host: dict = field(default_factory=dict)  # optional CPU-host section (simdist.host)

    def model(self, name: str) -> dict:
        full = resolve_model_name(name)
        if full not in self.models:
            raise KeyError(f"profile {self.source or self.hardware!r} has no model {name!r}; "
                           f"it has {sorted(self.models)}")
        return self.models[full]

    def has(self, name: str, tp: int) -> bool:
        full = resolve_model_name(name)
        return full in self.models and str(tp) in self.models[full]["tp"]

    def tps(self, name: str) -> list[int]:
        return sorted(int(t) for t in self.model(name)["tp"])

    def stage_cost(self, name: str, tp: int, pp: int = 1) -> StageCost:
        entry = self.model(name)["tp"].get(str(tp))
        if entry is None:
            raise KeyError(f"profile has no TP={tp} figures for {name}; it has {self.tps(name)}")
        return StageCost(entry, pp, self.overhead)

    def kv_bytes_per_token(self, name: str) -> int:
        return int(self.model(name)["kv_bytes_per_token"])

    def kv_capacity(self, name: str, tp: int, pp: int = 1) -> int:
        """KV-cache capacity in tokens of one (tp, pp) instance: the table when present (a
        measured tp x 1 entry scales with pp), else estimated from GPU memory minus weights
        (90 % usable)."""
        table = self.model(name).get("kv_capacity_tokens", {})
        if f"{tp}x{pp}" in table:
            return int(table[f"{tp}x{pp}"])
        full = resolve_model_name(name)
        if f"{tp}x1" in table and (full not in MODELS or self.hardware not in HARDWARE):
            # NOTE: a measured profile (e.g. CPU) lists pp = 1; every pipeline stage holds
            # 1/pp of the layers in the same per-worker cache, so capacity grows with pp.
            return int(table[f"{tp}x1"]) * pp
        if full not in MODELS or self.hardware not in HARDWARE:
            raise KeyError(f"no KV capacity for {name} tp={tp} pp={pp} and no specs to estimate")
        spec, hw = MODELS[full], HARDWARE[self.hardware]
        free = hw.memory_gb * 1e9 * tp * pp * 0.9 - spec.weight_bytes
        return max(0, int(free // spec.kv_bytes_per_token))

    def bandwidth_gb_s(self, kind: str) -> float:
        """`nvlink` or `network` bandwidth per GPU (GB/s), from the profile or the hardware."""
        key = f"{kind}_gb_s"
        if key in self.interconnect:
            return float(self.interconnect[key])
        hw = HARDWARE.get(self.hardware)
        if hw is None:
            # e.g. a profile measured on CPU workers (gloo): assume modest links
            logger.warning("profile has no %s for hardware %r; assuming %s GB/s", key,
                           self.hardware, FALLBACK_INTERCONNECT[key])
            return FALLBACK_INTERCONNECT[key]
        return float(getattr(hw, key))

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "hardware": self.hardware, "engine": self.engine,
             "source": self.source, "overhead": self.overhead,
             "interconnect": self.interconnect, "models": self.models}
        if self.host:
            d["host"] = self.host
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "") -> LatencyProfile:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} profile (format={d.get('format')!r}); DistServe "
                             "files are read with import_distserve()")
        return cls(d["hardware"], d["models"], d.get("engine", "distllm"),
                   d.get("overhead", {}), d.get("interconnect", {}), d.get("source") or source,
                   d.get("host") or {})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")


# DistServe's simulator overheads (see ../shared/reference/README.md).
DISTSERVE_OVERHEAD = {"iteration_ms": 2.0, "per_token_ms": 1e-4, "prefill_stage_ms": 1.0}


def import_distserve(profile_path: str | Path, max_tokens_csv: str | Path | None = None,
                     hardware: str = "a100-80g", engine: str = "distserve") -> LatencyProfile:
    """Convert DistServe's `profiler-*.json` (+ optional `max_num_tokens.csv`) to a profile."""
    raw = json.loads(Path(profile_path).read_text())
    caps: dict[str, dict[str, int]] = {}
    if max_tokens_csv is not None:
        with open(max_tokens_csv, newline="") as f:
            for row in csv.DictReader(f):
                key = f"{int(row['tp'])}x{int(row['pp'])}"
                caps.setdefault(row["model"], {})[key] = int(row["max_num_tokens"])
    models = {}
    for name, per_tp in raw.items():
        tps = {tp: {"prefill": list(c["prefill"]), "decode_small": list(c["decoding_smallbs"]),
                    "decode_large": list(c["decoding_largebs"]),
                    "decode_threshold": int(c.get("decoding_large_small_bs_threshold", 95))}
               for tp, c in per_tp.items()}
        kvb = MODELS[name].kv_bytes_per_token if name in MODELS else 0
        models[name] = {"kv_bytes_per_token": kvb, "tp": tps,
                        "kv_capacity_tokens": caps.get(name, {})}
    src = f"imported from DistServe {Path(profile_path).name}"
    return LatencyProfile(hardware, models, engine, dict(DISTSERVE_OVERHEAD), {}, src)


def load_profile(spec: str | Path) -> LatencyProfile:
    """A shipped profile by short name (`distserve-a100`, `vllm-a100`) or a JSON path; DistServe
    `profiler-*.json` files are imported on the fly."""
    path = PROFILE_DIR / SHIPPED[str(spec)] if str(spec) in SHIPPED else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"profile not found: {spec} (shipped: {sorted(SHIPPED)})")
    data = json.loads(path.read_text())
    if data.get("format") == FORMAT:
        return LatencyProfile.from_dict(data, source=str(spec))
    csv_path = path.parent / "max_num_tokens.csv"
    return import_distserve(path, csv_path if csv_path.is_file() else None)
