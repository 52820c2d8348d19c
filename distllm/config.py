"""Engine configuration: one frozen dataclass per concern, composed by `EngineConfig`.

Pure Python (no torch at import time): simdist and the CLI import it. Each config validates
itself in `__post_init__` and carries its own CLI flags (`add_cli_args` / `from_cli_args`).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distllm.models.dims import ModelDims

# dtype name -> bytes per element
DTYPE_SIZES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOAD_FORMATS = ("auto", "dummy")
DEVICES = ("cpu", "cuda")
PREEMPTION_MODES = ("recompute", "swap")


def check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Which model to run and how to load it (a local HF-format directory)."""

    model: str  # local directory holding config.json (+ weights, tokenizer)
    dtype: str = "float32"
    load_format: str = "auto"  # auto: read the weights; dummy: seeded random weights
    seed: int = 0
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    tokenizer: str | None = None  # None: same directory as the model

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_SIZES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_SIZES)}, got {self.dtype!r}")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        if not (Path(self.model) / "config.json").is_file():
            raise ValueError(f"model {self.model!r} is not a directory with a config.json")
        if self.max_model_len is not None:
            check_positive_int("max_model_len", self.max_model_len)
            limit = self.dims.max_position_embeddings
            if self.max_model_len > limit:
                raise ValueError(f"max_model_len={self.max_model_len} exceeds the model's "
                                 f"max_position_embeddings={limit}")

    @cached_property
    def hf_config(self) -> dict:
        return json.loads((Path(self.model) / "config.json").read_text())

    @cached_property
    def dims(self) -> ModelDims:
        from distllm.models.dims import model_dims

        return model_dims(self.hf_config)

    @property
    def max_seq_len(self) -> int:
        """Longest sequence (prompt + output) the engine serves."""
        return self.max_model_len or self.dims.max_position_embeddings

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.model

    @property
    def dtype_size(self) -> int:
        return DTYPE_SIZES[self.dtype]

    @property
    def kv_bytes_per_token(self) -> int:
        d = self.dims
        return 2 * d.num_layers * d.num_kv_heads * d.head_dim * self.dtype_size

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("model")
        g.add_argument("--model", required=True, help="local HF-format model directory")
        g.add_argument("--dtype", default="float32", choices=sorted(DTYPE_SIZES))
        g.add_argument("--load-format", default="auto", choices=LOAD_FORMATS,
                       help="auto: load weights; dummy: seeded random weights")
        g.add_argument("--seed", type=int, default=0, help="seed for dummy weights")
        g.add_argument("--max-model-len", type=int, default=None,
                       help="longest prompt + output (default: max_position_embeddings)")
        g.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --model)")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> ModelConfig:
        return cls(model=ns.model, dtype=ns.dtype, load_format=ns.load_format, seed=ns.seed,
                   max_model_len=ns.max_model_len, tokenizer=ns.tokenizer)


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache sizing. `num_kv_blocks` wins over `kv_cache_memory_gb` when set; on CUDA,
    with neither set, the cache takes what `gpu_memory_utilization` of the GPU leaves."""

    block_size: int = 16  # tokens per block
    num_kv_blocks: int | None = None
    # device memory given to the KV cache (CPU: RAM); None: 1 GiB on CPU, from
    # gpu_memory_utilization on CUDA
    kv_cache_memory_gb: float | None = None
    swap_space_gb: float = 0.0  # CPU memory for swapped-out blocks
    watermark: float = 0.01  # share of blocks kept free when admitting new requests
    # CUDA: share of the GPU's total memory this instance may use (weights + activations + KV)
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        check_positive_int("block_size", self.block_size)
        if self.num_kv_blocks is not None:
            check_positive_int("num_kv_blocks", self.num_kv_blocks)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1], got "
                             f"{self.gpu_memory_utilization}")
        if self.kv_cache_memory_gb is not None and not self.kv_cache_memory_gb > 0:
            raise ValueError(f"kv_cache_memory_gb must be > 0, got {self.kv_cache_memory_gb}")
        if self.swap_space_gb < 0:
            raise ValueError(f"swap_space_gb must be >= 0, got {self.swap_space_gb}")
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")

    def num_device_blocks(self, block_bytes: int) -> int:
        """KV blocks on the device, given the bytes one block takes over all layers (K and V)."""
        if self.num_kv_blocks is not None:
            return self.num_kv_blocks
        return max(1, math.floor((self.kv_cache_memory_gb or 1.0) * 2**30 / block_bytes))

    @property
    def is_sized_by_gpu_memory(self) -> bool:
        """On CUDA: neither a block count nor a memory size given, so size from free memory."""
        return self.num_kv_blocks is None and self.kv_cache_memory_gb is None

    def num_swap_blocks(self, block_bytes: int) -> int:
        return math.floor(self.swap_space_gb * 2**30 / block_bytes)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("KV cache")
        g.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
        g.add_argument("--num-kv-blocks", type=int, default=None,
                       help="number of KV blocks (overrides --kv-cache-memory-gb)")
        g.add_argument("--kv-cache-memory-gb", type=float, default=None,
                       help="memory given to the KV cache (default: 1 GiB on CPU; on CUDA "
                            "what --gpu-memory-utilization leaves)")
        g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                       help="CUDA: share of the GPU memory this instance may use")
        g.add_argument("--swap-space-gb", type=float, default=0.0,
                       help="CPU memory for swapped-out KV blocks")
        g.add_argument("--watermark", type=float, default=0.01,
                       help="share of KV blocks kept free when admitting requests")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> CacheConfig:
        return cls(block_size=ns.block_size, num_kv_blocks=ns.num_kv_blocks,
                   kv_cache_memory_gb=ns.kv_cache_memory_gb, swap_space_gb=ns.swap_space_gb,
                   watermark=ns.watermark,
                   gpu_memory_utilization=getattr(ns, "gpu_memory_utilization", 0.9))


@dataclass(frozen=True)
class ParallelConfig:
    """Tensor and pipeline parallelism of one instance (1 x 1 until the disaggregated engine)."""

    tp: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        check_positive_int("tp", self.tp)
        check_positive_int("pp", self.pp)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("parallelism")
        g.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
        g.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> ParallelConfig:
        return cls(tp=ns.tp, pp=ns.pp)


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching limits of one scheduler step."""

    max_num_seqs: int = 64  # requests in one batch
    max_num_batched_tokens: int = 4096  # tokens in one forward
    # Mixed batches: running decodes first, then prompts split into chunks that fill the budget.
    enable_chunked_prefill: bool = False
    preemption_mode: str = "recompute"  # recompute | swap (falls back to recompute when full)
    # A prefill batch stops growing once one more prompt would take it past this many tokens
    # (DistServe's L_m: past the length that saturates the device, batching prompts only delays
    # the first ones); the first prompt always goes. None: only max_num_batched_tokens.
    prefill_saturation_tokens: int | None = None

    def __post_init__(self) -> None:
        check_positive_int("max_num_seqs", self.max_num_seqs)
        check_positive_int("max_num_batched_tokens", self.max_num_batched_tokens)
        if self.prefill_saturation_tokens is not None:
            check_positive_int("prefill_saturation_tokens", self.prefill_saturation_tokens)
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ValueError(f"preemption_mode must be one of {PREEMPTION_MODES}, "
                             f"got {self.preemption_mode!r}")

    def admits_prefill(self, batch_tokens: int, num_tokens: int) -> bool:
        """Whether a prompt of `num_tokens` may join a prefill batch already holding
        `batch_tokens` (the saturation cap only; the caller checks the token budget)."""
        cap = self.prefill_saturation_tokens
        return batch_tokens == 0 or cap is None or batch_tokens + num_tokens <= cap

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("scheduler")
        g.add_argument("--max-num-seqs", type=int, default=64, help="requests per batch")
        g.add_argument("--max-num-batched-tokens", type=int, default=4096,
                       help="tokens per forward (>= max model length without chunked prefill)")
        g.add_argument("--enable-chunked-prefill", action="store_true",
                       help="mix decodes with prompt chunks under the token budget")
        g.add_argument("--preemption-mode", default="recompute", choices=PREEMPTION_MODES,
                       help="how to free blocks under memory pressure (swap needs swap space)")
        g.add_argument("--prefill-saturation-tokens", type=int, default=None,
                       help="stop adding prompts to a prefill batch past this many tokens (the "
                            "length that saturates the device; CPU: a few hundred)")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> SchedulerConfig:
        return cls(max_num_seqs=ns.max_num_seqs, max_num_batched_tokens=ns.max_num_batched_tokens,
                   enable_chunked_prefill=ns.enable_chunked_prefill,
                   preemption_mode=ns.preemption_mode,
                   prefill_saturation_tokens=ns.prefill_saturation_tokens)


@dataclass(frozen=True)
class EngineConfig:
    """Root config of one stage engine."""

    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    device: str = "cpu"
    enforce_eager: bool = False  # CUDA: no CUDA graphs for decode steps

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        # NOTE: without chunking a (preempted) request is prefilled in one forward, so the
        # token budget must cover the longest sequence.
        chunked = self.scheduler.enable_chunked_prefill
        if not chunked and self.scheduler.max_num_batched_tokens < self.model.max_seq_len:
            raise ValueError(
                f"max_num_batched_tokens={self.scheduler.max_num_batched_tokens} is smaller "
                f"than max_model_len={self.model.max_seq_len}: raise --max-num-batched-tokens "
                "or lower --max-model-len, or --enable-chunked-prefill")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        for sub in (ModelConfig, CacheConfig, ParallelConfig, SchedulerConfig):
            sub.add_cli_args(parser)
        parser.add_argument("--device", default="cpu", choices=DEVICES)
        parser.add_argument("--enforce-eager", action="store_true",
                            help="CUDA: run decode steps eagerly (no CUDA graphs)")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> EngineConfig:
        return cls(model=ModelConfig.from_cli_args(ns), cache=CacheConfig.from_cli_args(ns),
                   parallel=ParallelConfig.from_cli_args(ns),
                   scheduler=SchedulerConfig.from_cli_args(ns), device=ns.device,
                   enforce_eager=getattr(ns, "enforce_eager", False))

    @classmethod
    def from_kwargs(cls, model: str, **kwargs: Any) -> EngineConfig:
        """Build from flat keyword arguments (`LLM(model=..., block_size=8, max_num_seqs=4)`);
        each name goes to the sub-config that declares it."""
        parts: dict[str, dict[str, Any]] = {"model": {"model": model}, "cache": {},
                                            "parallel": {}, "scheduler": {}}
        owners = {"model": ModelConfig, "cache": CacheConfig, "parallel": ParallelConfig,
                  "scheduler": SchedulerConfig}
        root: dict[str, Any] = {}
        for name, value in kwargs.items():
            owner = next((k for k, c in owners.items() if name in {f.name for f in fields(c)}),
                         None)
            if owner is not None:
                parts[owner][name] = value
            elif name in ("device", "enforce_eager"):
                root[name] = value
            else:
                raise TypeError(f"unknown engine argument {name!r}")
        built = {key: owners[key](**kw) for key, kw in parts.items()}
        return cls(**built, **root)

