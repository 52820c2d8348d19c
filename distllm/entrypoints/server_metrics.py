"""Prometheus metrics of the API server (prometheus-client, one registry per app).

Histograms and counters are fed from each finished request's RequestOutput (engine-side monotonic
token times); gauges (running / waiting requests and KV usage per instance, migrations in flight)
are read from `AsyncLLM.stats()` at scrape time.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from distllm.engine.async_llm import AsyncLLM
    from distllm.engine.outputs import RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                   5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                   0.5, 0.75, 1.0, 2.5, 5.0)
_E2E_BUCKETS_S = (0.01, 0.05, 0.1, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0)
# stats key -> (metric suffix, help)
_INSTANCE_GAUGES = {
    "num_running": ("num_requests_running", "Requests running on the instance"),
    "num_waiting": ("num_requests_waiting", "Requests waiting on the instance"),
    "num_swapped": ("num_requests_swapped", "Requests swapped out to CPU on the instance"),
}


class _EngineCollector(Collector):
    """Scrape-time gauges from `AsyncLLM.stats()`."""

    def __init__(self, engine: AsyncLLM, prefix: str) -> None:
        self.engine, self.prefix = engine, prefix

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.engine.stats()
        p = self.prefix
        yield GaugeMetricFamily(f"{p}num_requests_queued", "Requests without a first token yet",
                                value=stats["num_queued_requests"])
        yield GaugeMetricFamily(f"{p}num_migrations_in_flight", "KV migrations in flight",
                                value=stats["num_migrations_in_flight"])
        families = {key: GaugeMetricFamily(f"{p}{name}", help_, labels=["instance"])
                    for key, (name, help_) in _INSTANCE_GAUGES.items()}
        usage = GaugeMetricFamily(f"{p}kv_cache_usage_ratio", "Share of KV blocks in use (0-1)",
                                  labels=["instance"])
        used_blocks = GaugeMetricFamily(f"{p}num_kv_blocks_used", "KV blocks in use",
                                        labels=["instance"])
        for name, inst in stats["instances"].items():
            for key, family in families.items():
                family.add_metric([name], inst.get(key, 0))
            num_blocks = inst.get("num_blocks", 0)
            used = num_blocks - inst.get("num_free_blocks", 0)
            usage.add_metric([name], used / num_blocks if num_blocks else 0.0)
            used_blocks.add_metric([name], used)
        yield from families.values()
        yield usage
        yield used_blocks


class ServerMetrics:
    """All metrics of one app, in their own registry (`render()` gives the exposition text)."""

    def __init__(self, engine: AsyncLLM, prefix: str = "distllm_") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, p = self.registry, prefix
        self.ttft = Histogram(f"{p}time_to_first_token_seconds", "Time to first token",
                              buckets=_TTFT_BUCKETS_S, registry=r)
        self.tpot = Histogram(f"{p}time_per_output_token_seconds",
                              "Time between consecutive output tokens", buckets=_TPOT_BUCKETS_S,
                              registry=r)
        self.e2e = Histogram(f"{p}e2e_request_latency_seconds", "Arrival to last token",
                             buckets=_E2E_BUCKETS_S, registry=r)
        self.prompt_tokens = Counter(f"{p}prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter(f"{p}generation_tokens", "Output tokens generated",
                                         registry=r)
        self.preemptions = Counter(f"{p}num_preemptions", "Preemptions of finished requests",
                                   registry=r)
        self.finished = Counter(f"{p}request_success", "Finished requests by finish reason",
                                ["finish_reason"], registry=r)
        self.rejected = Counter(f"{p}request_rejected", "Requests refused by HTTP status",
                                ["status"], registry=r)
        self.registry.register(_EngineCollector(engine, prefix))

    def observe_finished(self, output: RequestOutput) -> None:
        """Record a finished request (its last RequestOutput)."""
        times = output.token_times
        self.finished.labels(output.finish_reason or "error").inc()
        self.prompt_tokens.inc(len(output.prompt_token_ids))
        self.generation_tokens.inc(len(output.token_ids))
        self.preemptions.inc(output.num_preemptions)
        if not times:
            return
        self.ttft.observe(max(0.0, times[0] - output.arrival_time))
        self.e2e.observe(max(0.0, times[-1] - output.arrival_time))
        for prev, cur in zip(times, times[1:], strict=False):
            self.tpot.observe(cur - prev)

    def observe_aborted(self) -> None:
        """A request that ended before its finished output reached the client (disconnect)."""
        self.finished.labels("abort").inc()

    def observe_rejected(self, status: int) -> None:
        self.rejected.labels(str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
