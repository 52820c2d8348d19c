"""KV cache sizing on CUDA: what a `gpu_memory_utilization` share of the GPU leaves after this
process's weights and a forward's activation peak (vLLM-style), capped by what is free now so
two instances sharing one GPU (1P+1D) each fit in their own share."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from distllm.models.dims import ModelDims

logger = logging.getLogger(__name__)

# NOTE: kept free for the CUDA context, cuBLAS workspaces and allocator fragmentation
HEADROOM_BYTES = 512 * 2**20


def activation_peak_bytes(dims: ModelDims, max_num_batched_tokens: int, max_num_seqs: int,
                          dtype_size: int) -> int:
    """Upper estimate of one forward's transient memory: a few hidden-sized and the MLP's
    intermediate tensors per batched token, plus fp32 logits of the sampled rows."""
    d = dims
    qkv = (d.num_heads + 2 * d.num_kv_heads) * d.head_dim
    per_token = (4 * d.hidden_size + qkv + 3 * d.intermediate_size) * dtype_size
    logits = max_num_seqs * d.vocab_size * (4 + dtype_size) * 2
    return max_num_batched_tokens * per_token + logits


def kv_cache_budget_bytes(total_bytes: int, free_bytes: int, used_by_self_bytes: int,
                          activation_bytes: int, utilization: float) -> int:
    """Bytes the KV cache may take: this instance's share of the GPU minus its own usage (weights,
    already allocated) and activation peak, never more than is free now minus headroom.

    Args:
        total_bytes, free_bytes: `torch.cuda.mem_get_info()` of the device (free first there).
        used_by_self_bytes: memory this process holds already (`torch.cuda.memory_reserved`).
        activation_bytes: transient peak of one forward (`activation_peak_bytes`).
        utilization: share of `total_bytes` this instance may use, in (0, 1].
    Returns 0 when nothing is left (the caller raises)."""
    share = int(total_bytes * utilization) - used_by_self_bytes - activation_bytes
    available = free_bytes - activation_bytes - HEADROOM_BYTES
    return max(0, min(share, available))


def cuda_kv_cache_bytes(device: torch.device, utilization: float, activation_bytes: int) -> int:
    """`kv_cache_budget_bytes` for a CUDA device, measured now. Raises when nothing is left."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    used = torch.cuda.memory_reserved(device)
    budget = kv_cache_budget_bytes(total, free, used, activation_bytes, utilization)
    logger.info("GPU memory: total %.1f GiB, free %.1f GiB, this process %.1f GiB, activations "
                "<= %.2f GiB -> KV cache %.2f GiB (utilization %.2f)", total / 2**30,
                free / 2**30, used / 2**30, activation_bytes / 2**30, budget / 2**30,
                utilization)
    if budget <= 0:
        raise RuntimeError(
            f"no GPU memory left for the KV cache: {utilization:.2f} x {total / 2**30:.1f} GiB "
            f"minus {used / 2**30:.1f} GiB held and {activation_bytes / 2**30:.2f} GiB of "
            f"activations ({free / 2**30:.1f} GiB free); raise --gpu-memory-utilization or "
            "lower --max-num-batched-tokens")
    return budget
