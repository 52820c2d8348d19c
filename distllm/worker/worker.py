"""One worker per device: owns the model, its KV cache and the model runner. The engine drives it
through `determine_num_blocks` -> `init_cache` -> `execute_model` (later as a Ray actor)."""
from __future__ import annotations

import logging

import torch

from distllm import envs
from distllm.config import EngineConfig
from distllm.core.scheduler_output import ModelRunnerOutput, SchedulerOutput
from distllm.distributed.parallel_info import ParallelInfo
from distllm.worker.cache_engine import CacheEngine, block_bytes
from distllm.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


class Worker:
    """Holds the model shard and KV cache of one device."""

    def __init__(self, config: EngineConfig, parallel: ParallelInfo | None = None) -> None:
        from distllm.models.loader import init_dummy_weights, load_weights
        from distllm.models.registry import build_model, resolve_dtype

        if envs.num_threads() > 0:
            torch.set_num_threads(envs.num_threads())
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = resolve_dtype(config.model.dtype)
        model_config = config.model
        self.parallel = parallel or ParallelInfo()
        self.model = build_model(model_config.hf_config, dtype=self.dtype, device=self.device,
                                 parallel=self.parallel)
        if model_config.load_format == "dummy":
            init_dummy_weights(self.model, model_config.seed)
        else:
            load_weights(self.model, model_config.model)
        dims = model_config.dims
        self.runner = ModelRunner(self.model, config.cache.block_size, dims.vocab_size,
                                  self.device, seed=model_config.seed)
        self.cache_engine: CacheEngine | None = None

    @property
    def cache_shape(self) -> tuple[int, int]:
        """(layers, KV heads) this worker caches: its pipeline stage's layers, its TP heads."""
        dims, p = self.config.model.dims, self.parallel
        start, end = p.layer_range(dims.num_layers)
        return end - start, max(1, dims.num_kv_heads // p.tp_size)

    def determine_num_blocks(self) -> tuple[int, int]:
        """(device blocks, CPU swap blocks) the cache config affords for this model shard."""
        dims = self.config.model.dims
        num_layers, num_kv_heads = self.cache_shape
        nbytes = block_bytes(num_layers, num_kv_heads, dims.head_dim,
                             self.config.cache.block_size, self.dtype)
        cache = self.config.cache
        if self.device.type == "cuda" and cache.is_sized_by_gpu_memory:
            return self._cuda_num_blocks(nbytes), cache.num_swap_blocks(nbytes)
        return cache.num_device_blocks(nbytes), cache.num_swap_blocks(nbytes)

    def _cuda_num_blocks(self, nbytes: int) -> int:
        from distllm.worker.gpu_memory import activation_peak_bytes, cuda_kv_cache_bytes

        sched = self.config.scheduler
        activations = activation_peak_bytes(
            self.config.model.dims, sched.max_num_batched_tokens, sched.max_num_seqs,
            self.config.model.dtype_size)
        budget = cuda_kv_cache_bytes(self.device, self.config.cache.gpu_memory_utilization,
                                     activations)
        return max(1, budget // nbytes)

    def init_cache(self, num_blocks: int, num_swap_blocks: int) -> None:
        dims = self.config.model.dims
        num_layers, num_kv_heads = self.cache_shape
        self.cache_engine = CacheEngine(
            num_layers, num_kv_heads, dims.head_dim, self.config.cache.block_size,
            num_blocks, num_swap_blocks, self.dtype, self.device)
        logger.info("KV cache: %d blocks of %d tokens (+%d swap blocks)", num_blocks,
                    self.config.cache.block_size, num_swap_blocks)
        if self.wants_cuda_graphs:
            self._capture_cuda_graphs()

    @property
    def wants_cuda_graphs(self) -> bool:
        """Decode steps replay CUDA graphs: CUDA kernels for this model, not --enforce-eager,
        one tp=1 pp=1 shard."""
        from distllm import ops
        from distllm.worker.cuda_graph import can_capture

        return (self.device.type == "cuda" and not self.config.enforce_eager
                and self.parallel.tp_size == 1 and self.parallel.pp_size == 1
                and can_capture(self.dtype, self.config.model.dims.head_dim,
                                self.config.cache.block_size, ops.HAS_CUDA_NATIVE))

    @property
    def uses_cuda_graphs(self) -> bool:
        return self.runner.model is not self.model

    def _capture_cuda_graphs(self) -> None:
        from distllm.worker.cuda_graph import CudaGraphModel

        config = self.config
        try:
            self.runner.model = CudaGraphModel(
                self.model, self.cache_engine.device_caches, config.scheduler.max_num_seqs,
                -(-config.model.max_seq_len // config.cache.block_size), self.device)
        except RuntimeError:
            logger.warning("CUDA graph capture failed; decode steps run eagerly", exc_info=True)

    def execute_model(self, scheduler_output: SchedulerOutput,
                      intermediate: torch.Tensor | None = None
                      ) -> ModelRunnerOutput | torch.Tensor:
        """Move blocks as ordered (swap in, swap out, copy), then run the batch (pipeline
        stages: see ModelRunner.execute_model)."""
        cache = self.cache_engine
        assert cache is not None, "call init_cache first"
        cache.swap_in(scheduler_output.blocks_to_swap_in)
        cache.swap_out(scheduler_output.blocks_to_swap_out)
        cache.copy(scheduler_output.blocks_to_copy)
        return self.runner.execute_model(scheduler_output, cache.device_caches, intermediate)
