"""Async streaming over the Ray engine: `AsyncDisaggLLM` is F's `AsyncLLM` (same generate /
abort / stats interface, same engine thread) driving a `DisaggEngine`, and `build_async_llm`
picks the in-process or the Ray engine from the configs (the server's factory)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distllm.engine.async_llm import AsyncLLM

if TYPE_CHECKING:
    from distllm.config import EngineConfig
    from distllm.disagg_config import DisaggConfig
    from distllm.engine.disagg_controller import DisaggEngine


class AsyncDisaggLLM(AsyncLLM):
    """`AsyncLLM` over a `DisaggEngine`: per-instance stats, Ray workers stopped on shutdown."""

    def __init__(self, engine: DisaggEngine, max_queued_requests: int | None = None) -> None:
        super().__init__(engine, max_queued_requests=max_queued_requests,  # type: ignore[arg-type]
                         instance_name="disaggregated")

    @classmethod
    def from_configs(cls, config: EngineConfig, disagg: DisaggConfig,
                     **kwargs: Any) -> AsyncDisaggLLM:
        from distllm.engine.fault_tolerance import ResilientDisaggEngine

        # NOTE: a DisaggEngine that re-creates dead instances (distllm/engine/fault_tolerance.py)
        return cls(ResilientDisaggEngine(config, disagg), **kwargs)

    def stats(self) -> dict[str, Any]:
        """As AsyncLLM.stats, with one entry per prefill / decode / colocated instance."""
        engine_stats = self.engine.stats()
        return {"num_requests": len(self._streams),
                "num_queued_requests": self.num_queued_requests,
                "num_migrations_in_flight": engine_stats["num_migrations_in_flight"],
                "instances": engine_stats["instances"]}

    def shutdown(self, timeout_s: float = 10.0) -> None:
        super().shutdown(timeout_s)
        self.engine.shutdown()

    def _abort_everything(self) -> None:
        self.engine.abort_request(list(self.engine.requests))
        self.engine.step()


def build_async_llm(config: EngineConfig, disagg: DisaggConfig | None = None,
                    **kwargs: Any) -> AsyncLLM:
    """The server's engine: in-process `AsyncLLM` when `disagg` is None (no --mode and no
    --placement), else the Ray engine in the DisaggConfig's mode. kwargs go to the AsyncLLM
    constructor (e.g. max_queued_requests)."""
    if disagg is None:
        return AsyncLLM.from_engine_config(config, **kwargs)
    return AsyncDisaggLLM.from_configs(config, disagg, **kwargs)
