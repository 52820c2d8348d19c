"""The benchmark result file (`.exp`, JSON), shared by real runs and simdist's simulated runs:

    {"meta": {backend, model, dataset, rate, num_prompts, seed, arrival, cv, start_time_unix, ...},
     "requests": [{prompt_len, output_len, start_time, end_time, token_timestamps,
                   lifecycle_events, latency, ttft, tpot, error, ...}],
     "summary": {request_throughput, mean_ttft_ms, p99_tpot_ms, attainment, ...}}

Request times are seconds from the round's start (client clock); `lifecycle_events` carry the
server's own clock (only differences between them are meaningful). Non-finite numbers are written
as null so the file is strict JSON. This module imports no HTTP client: simulators can use
`exp_document` / `write_exp` and analysis can use `load_exp` with pure-Python dependencies only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from distllm.metrics import PERCENTILES, RequestRecord, json_safe, percentile, summarize
from distllm.request import Lifetime

if TYPE_CHECKING:
    from evaluation.load_runner import RoundResult


@dataclass
class ExpRun:
    """A loaded `.exp` file."""

    meta: dict
    records: list[RequestRecord]
    lifetimes: list[Lifetime]
    summary: dict
    path: str = ""

    @property
    def rate(self) -> float:
        return float(self.meta.get("rate", math.nan))


def lateness_stats(lateness_s: list[float]) -> dict[str, float]:
    out = {f"p{p}_dispatch_lateness_ms": percentile(lateness_s, p) * 1e3 for p in PERCENTILES}
    out["max_dispatch_lateness_ms"] = max(lateness_s) * 1e3 if lateness_s else math.nan
    return out


def build_summary(
    result: RoundResult,
    ttft_slo_ms: float | None,
    tpot_slo_ms: float | None,
    is_streaming: bool = True,
) -> dict:
    """metrics.summarize + dispatch lateness; non-streaming backends get server-reported output
    lengths and no TPOT/ITL (not measurable)."""
    summary = summarize(result.records, result.duration_s, ttft_slo_ms, tpot_slo_ms)
    summary.update(lateness_stats(result.lateness_s))
    if not is_streaming:
        ok = [(rec, res) for rec, res in zip(result.records, result.results, strict=True) if rec.ok]
        total = sum(res.num_output_tokens or len(rec.token_timestamps) for rec, res in ok)
        summary["total_output_tokens"] = total
        d = result.duration_s if result.duration_s > 0 else math.nan
        summary["output_throughput"] = total / d
        summary["total_token_throughput"] = (summary["total_input_tokens"] + total) / d
        for key in list(summary):
            if "_tpot_" in key or "_itl_" in key:
                summary[key] = math.nan
    return summary


def build_exp(meta: dict, result: RoundResult, summary: dict) -> dict:
    requests = []
    for rec, res, sched in zip(result.records, result.results, result.scheduled, strict=True):
        item = rec.to_json()
        item["lifecycle_events"] = res.lifecycle_events
        item["scheduled_time"] = sched
        item["num_output_tokens"] = (
            res.num_output_tokens
            if res.num_output_tokens is not None
            else len(rec.token_timestamps)
        )
        requests.append(item)
    start_iso = datetime.fromtimestamp(result.start_unix, UTC).isoformat()
    full_meta = {
        **meta,
        "start_time": start_iso,
        "start_time_unix": result.start_unix,
        "duration_s": result.duration_s,
    }
    return json_safe({"meta": full_meta, "requests": requests, "summary": summary})


def exp_document(
    meta: dict, records: list[RequestRecord], lifetimes: list[Lifetime] | None, summary: dict
) -> dict:
    """A `.exp` dict from plain records (e.g. a simulated run); lifetimes optional."""
    lifetimes = lifetimes or [Lifetime() for _ in records]
    requests = [
        {
            **rec.to_json(),
            "lifecycle_events": life.to_json(),
            "num_output_tokens": len(rec.token_timestamps),
        }
        for rec, life in zip(records, lifetimes, strict=True)
    ]
    return json_safe({"meta": meta, "requests": requests, "summary": summary})


def write_exp(path: str | Path, exp: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(exp, allow_nan=False) + "\n")
    return out


def record_from_json(d: dict) -> RequestRecord:
    return RequestRecord(
        prompt_len=int(d.get("prompt_len", 0)),
        output_len=int(d.get("output_len", 0)),
        start_time=float(d.get("start_time", 0.0)),
        end_time=float(d.get("end_time") or 0.0),
        token_timestamps=[float(t) for t in d.get("token_timestamps") or []],
        error=d.get("error"),
    )


def load_exp(path: str | Path) -> ExpRun:
    """Read a `.exp` (ours or simdist's). Records without token timestamps but with ttft/latency
    get evenly spaced ones synthesised from ttft/tpot (same TTFT/TPOT, same token count)."""
    data = json.loads(Path(path).read_text())
    records, lifetimes = [], []
    for d in data.get("requests", []):
        rec = record_from_json(d)
        if not rec.token_timestamps and d.get("ttft") is not None and not rec.error:
            first, tpot = rec.start_time + float(d["ttft"]), float(d.get("tpot") or 0.0)
            rec.token_timestamps = [first + k * tpot for k in range(max(1, rec.output_len))]
        records.append(rec)
        lifetimes.append(Lifetime.from_json(d.get("lifecycle_events") or []))
    return ExpRun(data.get("meta", {}), records, lifetimes, data.get("summary", {}), str(path))


SUMMARY_ROWS = (
    ("Successful requests", "completed", "{:.0f}"),
    ("Failed requests", "failed", "{:.0f}"),
    ("Benchmark duration (s)", "duration_s", "{:.2f}"),
    ("Request throughput (req/s)", "request_throughput", "{:.2f}"),
    ("Output token throughput (tok/s)", "output_throughput", "{:.2f}"),
    ("Total token throughput (tok/s)", "total_token_throughput", "{:.2f}"),
)


def format_summary(summary: dict, title: str = "Serving benchmark result") -> str:
    """vLLM-style console table: throughput, latency percentiles, SLO attainment, goodput."""
    lines = [f"{'=' * 20} {title} {'=' * 20}"]
    row = "{:<44}{:>14}"

    def fmt(key: str, spec: str = "{:.2f}") -> str:
        v = summary.get(key)
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else spec.format(v)

    lines += [row.format(label, fmt(key, spec)) for label, key, spec in SUMMARY_ROWS]
    for metric, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E")):
        lines.append(f"{'-' * 17} {label} (ms) {'-' * 17}")
        for stat in ("mean", "median", "p90", "p99"):
            lines.append(
                row.format(f"{stat.capitalize()} {label} (ms)", fmt(f"{stat}_{metric}_ms"))
            )
    if "attainment" in summary:
        lines.append(
            f"{'-' * 17} SLO (TTFT {fmt('ttft_slo_ms', '{:g}')} ms, TPOT "
            f"{fmt('tpot_slo_ms', '{:g}')} ms) {'-' * 6}"
        )
        for label, key in (
            ("Attainment, both SLOs (%)", "attainment"),
            ("Attainment, TTFT only (%)", "attainment_ttft"),
            ("Attainment, TPOT only (%)", "attainment_tpot"),
        ):
            v = summary.get(key)
            lines.append(row.format(label, "n/a" if v is None else f"{100 * v:.1f}"))
        lines.append(row.format("Goodput (req/s)", fmt("request_goodput")))
    lines.append(
        row.format("P99 dispatch lateness (ms)", fmt("p99_dispatch_lateness_ms", "{:.3f}"))
    )
    lines.append("=" * (42 + len(title)))
    return "\n".join(lines)
