"""Step timers the profiler drives: each runs one hand-made `SchedulerOutput` the way the engine
does and returns its wall time, and measures the instance's KV capacity and KV transfer bandwidth.

- `InProcessTimer`: a `Worker` in this process (tp = pp = 1): the colocated engine's step.
- `RayTimer`: one prefill and one decode instance on Ray, as the disaggregated engine builds
  them (Ray call + every tp x pp worker; decode steps with the pipeline full where the engine
  schedules them asynchronously); KV transfer uses the engine's own migration path.
"""
from __future__ import annotations

import logging
import statistics
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distllm.config import EngineConfig
    from distllm.core.scheduler_output import SchedulerOutput
    from distllm.disagg_config import DisaggConfig

logger = logging.getLogger(__name__)
PIPELINED_STEPS = 4  # decode steps timed per sample with the pipeline full (async scheduling)


class StepTimer(ABC):
    """Times steps of one instance configuration."""

    config: EngineConfig

    @abstractmethod
    def time_step(self, scheduler_output: SchedulerOutput) -> float:
        """Seconds one step (inputs, forward, sampling) takes, as the engine runs it."""

    @abstractmethod
    def kv_capacity_tokens(self) -> int:
        """KV tokens one instance holds (its cache config)."""

    @abstractmethod
    def transfer_seconds(self, num_blocks: int, repeats: int) -> tuple[int, float]:
        """(bytes, median seconds) of moving `num_blocks` KV blocks between two instances."""

    def close(self) -> None:  # noqa: B027 - most timers hold nothing to release
        """Release workers and processes."""


class InProcessTimer(StepTimer):
    """A Worker in this process; KV transfer is timed over gloo between two local processes."""

    def __init__(self, config: EngineConfig, num_threads: int = 1) -> None:
        import torch

        from distllm.worker.worker import Worker

        if config.parallel.world_size != 1:
            raise ValueError("the in-process timer runs tp = pp = 1; use the ray backend")
        torch.set_num_threads(num_threads)
        self.config = config
        self.worker = Worker(config)
        num_blocks, swap = self.worker.determine_num_blocks()
        self.num_blocks = num_blocks
        self.worker.init_cache(num_blocks, swap)

    def time_step(self, scheduler_output: SchedulerOutput) -> float:
        import torch

        t0 = time.perf_counter()
        self.worker.execute_model(scheduler_output)
        if self.worker.device.type == "cuda":
            torch.cuda.synchronize(self.worker.device)
        return time.perf_counter() - t0

    def kv_capacity_tokens(self) -> int:
        return self.num_blocks * self.config.cache.block_size

    def transfer_seconds(self, num_blocks: int, repeats: int) -> tuple[int, float]:
        from distllm.profiler.gloo_bandwidth import time_gloo_transfer

        cache = self.worker.cache_engine
        assert cache is not None
        k = cache.device_caches[0][0]  # [num_blocks, kv_heads, block_size, head_dim]
        shape = (2, len(cache.device_caches), num_blocks, *k.shape[1:])
        return time_gloo_transfer(shape, k.dtype, repeats)


class RayTimer(StepTimer):
    """One prefill + one decode instance built exactly as `DisaggEngine` builds them."""

    def __init__(self, config: EngineConfig, disagg: DisaggConfig) -> None:
        from distllm.engine.disagg_controller import DisaggEngine

        self.config = config
        self.timeout_s = disagg.step_timeout_s
        self.engine = DisaggEngine(config, disagg)
        self.prefill, self.decode = self.engine.prefill[0], self.engine.decode[0]

    def time_step(self, scheduler_output: SchedulerOutput) -> float:
        """A prefill step: submit to result (the engine waits it out). A decode step of an
        instance that keeps more than one step in flight (async scheduling): the interval
        between results with its pipeline full, as the engine runs it (the round trip and the
        driver's work overlap the worker's step)."""
        inst = self.decode if scheduler_output.decodes else self.prefill
        if scheduler_output.decodes and inst.pp == 1 and inst.max_inflight > 1:
            return self.pipelined(inst, scheduler_output)[0]
        t0 = time.perf_counter()
        inst.submit(scheduler_output).result(self.timeout_s)
        return time.perf_counter() - t0

    def pipelined(self, inst, scheduler_output: SchedulerOutput,  # noqa: ANN001
                  steps: int = PIPELINED_STEPS) -> tuple[float, float]:
        """(wall, driver CPU) seconds per step of `inst` with its pipeline full: `steps`
        results, each followed by the next submission."""
        inflight = [inst.submit(scheduler_output) for _ in range(inst.max_inflight)]
        inflight.pop(0).result(self.timeout_s)
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            inflight.append(inst.submit(scheduler_output))
            inflight.pop(0).result(self.timeout_s)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        for step in inflight:
            step.result(self.timeout_s)
        return wall / steps, cpu / steps

    def kv_capacity_tokens(self) -> int:
        return self.decode.block_manager.num_blocks * self.config.cache.block_size

    def transfer_seconds(self, num_blocks: int, repeats: int) -> tuple[int, float]:
        import ray

        from distllm.engine.stage_engine import submit_migration

        blocks = list(range(num_blocks))
        nbytes, times = 0, []
        for _ in range(repeats):
            t0 = time.perf_counter()
            nbytes = sum(ray.get(submit_migration(self.prefill, self.decode, blocks, blocks),
                                 timeout=self.timeout_s))
            times.append(time.perf_counter() - t0)
        return nbytes, statistics.median(times)

    def close(self) -> None:
        self.engine.shutdown()
