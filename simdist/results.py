"""Simulated-run results in the benchmark's `.exp` schema (DESIGN.md section 4), so one analysis
script reads simulated and real runs: records via distllm.metrics.RequestRecord, lifecycle via
distllm.request.Lifetime, summary via distllm.metrics.summarize.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from distllm.metrics import PERCENTILES, RequestRecord, json_safe, percentile, summarize
from simdist.sim_request import SimRequest

SLO_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


@dataclass
class SimResult:
    requests: list[SimRequest]
    end_time_s: float
    num_events: int
    num_gpus: int
    cluster: object = None  # the simdist.cluster.Cluster after the run (final instance state)

    def ttft_tpot(self) -> tuple[list[float], list[float]]:
        """Per-request TTFT and TPOT in seconds (inf for failed or unfinished requests)."""
        ttft, tpot = [], []
        inf = math.inf
        for r in self.requests:
            if r.error is not None or r.last_token < 0:
                ttft.append(inf)
                tpot.append(inf)
                continue
            ttft.append(r.first_token - r.arrival)
            n = r.output_len - 1
            tpot.append((r.last_token - r.first_token) / n if n > 0 else 0.0)
        return ttft, tpot

    def attainment(self, ttft_slo_ms: float | None, tpot_slo_ms: float | None) -> float:
        """Share of requests meeting every given SLO (fast path, same rule as metrics)."""
        ttft, tpot = self.ttft_tpot()
        a = math.inf if ttft_slo_ms is None else ttft_slo_ms * 1e-3
        b = math.inf if tpot_slo_ms is None else tpot_slo_ms * 1e-3
        ok = sum(1 for x, y in zip(ttft, tpot, strict=True) if x <= a and y <= b and x != math.inf)
        return ok / len(self.requests)

    def percentiles_ms(self) -> dict[str, float]:
        ttft, tpot = self.ttft_tpot()
        out = {}
        for name, xs in (("ttft", ttft), ("tpot", tpot)):
            finite = [x for x in xs if x != math.inf]
            for p in PERCENTILES + (90,):
                out[f"p{p}_{name}_ms"] = percentile(finite, p) * 1e3
        return out

    def records(self) -> list[RequestRecord]:
        out = []
        for r in self.requests:
            ts = r.token_timestamps() if r.error is None and r.last_token >= 0 else []
            err = r.error if r.error is not None else (None if ts else "unfinished")
            out.append(RequestRecord(r.prompt_len, r.output_len, r.arrival,
                                     ts[-1] if ts else r.arrival, ts, err))
        return out

    def summary(self, ttft_slo_ms: float | None = None, tpot_slo_ms: float | None = None,
                scales: tuple[float, ...] = SLO_SCALES) -> dict:
        recs = self.records()
        first = min((r.arrival for r in self.requests), default=0.0)
        out = summarize(recs, self.end_time_s - first, ttft_slo_ms, tpot_slo_ms)
        out["num_gpus"] = self.num_gpus
        out["simulated_events"] = self.num_events
        if ttft_slo_ms is not None and tpot_slo_ms is not None:
            out["attainment_by_slo_scale"] = {
                str(s): self.attainment(ttft_slo_ms * s, tpot_slo_ms * s) for s in scales}
            out["per_gpu_goodput_rps"] = out["request_goodput"] / max(self.num_gpus, 1)
        return out

    def to_exp(self, meta: dict, ttft_slo_ms: float | None = None,
               tpot_slo_ms: float | None = None) -> dict:
        """{"meta", "requests", "summary"}; each request adds `lifecycle_events`."""
        reqs = []
        for r, rec in zip(self.requests, self.records(), strict=True):
            d = rec.to_json()
            d["lifecycle_events"] = r.lifetime().to_json()
            reqs.append(d)
        return {"meta": meta, "requests": reqs,
                "summary": self.summary(ttft_slo_ms, tpot_slo_ms)}


def write_exp(exp: dict, path: str | Path) -> None:
    """JSON with NaN/inf turned into null (strict JSON readers reject them)."""
    Path(path).write_text(json.dumps(json_safe(exp), indent=1) + "\n")

