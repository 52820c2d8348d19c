"""Paged KV ops: the only module that touches distllm._C; falls back to ops/reference.py.

Each public function keeps reference.py's signature and dispatches to the native op
(torch.ops.distllm_C.*) when distllm._C is built, not disabled (DISTLLM_DISABLE_NATIVE=1) and
supports the tensors' device and dtypes (CPU; fp32/bf16/fp16 caches); otherwise to the reference.
CUDA tensors go to the CUDA kernels (csrc/cuda) when _C was built with them (HAS_CUDA_NATIVE):
decode attention for fp16/bf16, head_dim 64/128/256, block_size 8/16/32; prefill attention for
fp16/bf16, head_dim 64/128 (cached prefix: block_size 8/16/32); the cache ops for any
dtype; `migrate_blocks` is the batched KV migration gather/scatter (one launch per call).
"""

from __future__ import annotations

import logging

import torch

from distllm import envs
from distllm.ops import reference

logger = logging.getLogger(__name__)

__all__ = [
    "HAS_CUDA_NATIVE",
    "HAS_NATIVE",
    "copy_blocks",
    "migrate_blocks",
    "native_isa",
    "paged_decode_attention",
    "prefill_attention",
    "reshape_and_cache",
    "swap_blocks",
]

_ATTN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _load_native() -> bool:
    if envs.disable_native():
        return False
    try:
        import distllm._C  # noqa: F401  (registers torch.ops.distllm_C)
    except ImportError as exc:
        logger.debug("distllm._C unavailable, using the torch reference ops: %s", exc)
        return False
    return hasattr(torch.ops.distllm_C, "paged_decode_attention")


HAS_NATIVE = _load_native()
# NOTE: the CUDA kernels register under the same schemas for the CUDA dispatch key.
HAS_CUDA_NATIVE = HAS_NATIVE and torch._C._dispatch_has_kernel_for_dispatch_key(
    "distllm_C::paged_decode_attention", "CUDA"
)
_CUDA_ATTN_DTYPES = (torch.bfloat16, torch.float16)


def native_isa() -> str | None:
    """The ISA level of the native CPU attention kernels (base/avx2/avx512), None without _C."""
    return str(torch.ops.distllm_C.cpu_isa()) if HAS_NATIVE else None


def _on_cpu(*tensors: torch.Tensor | None) -> bool:
    # NOTE: `is_cpu` is ~5x cheaper than `device.type`; this runs per layer per step.
    return all(t is None or t.is_cpu for t in tensors)


def _on_cuda(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or t.is_cuda for t in tensors)


def _cuda_decode_ok(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor
) -> bool:
    return (
        query.dtype in _CUDA_ATTN_DTYPES
        and key_cache.dtype == query.dtype
        and _cache_ok(key_cache, value_cache)
        and query.shape[-1] in (64, 128, 256)
        and key_cache.shape[2] in (8, 16, 32)
        and query.shape[1] % key_cache.shape[1] == 0
    )


def _cuda_prefill_ok(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor | None,
) -> bool:
    return (
        query.dtype in _CUDA_ATTN_DTYPES
        and key.dtype == query.dtype == value.dtype
        and query.shape[-1] in (64, 128)
        and query.shape[1] % key.shape[1] == 0
        and (key_cache is None or key_cache.dtype == query.dtype)
    )


def _i32(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.int32 and t.is_contiguous():
        return t
    return t.to(torch.int32).contiguous()


def _native_device_ok(*tensors: torch.Tensor) -> bool:
    """The tensors all sit on a device whose kernels _C was built with (CPU, or CUDA)."""
    return (HAS_NATIVE and _on_cpu(*tensors)) or (HAS_CUDA_NATIVE and _on_cuda(*tensors))


def _cache_ok(key_cache: torch.Tensor, value_cache: torch.Tensor) -> bool:
    return (
        key_cache.dtype in _ATTN_DTYPES
        and key_cache.dtype == value_cache.dtype
        and key_cache.is_contiguous()
        and value_cache.is_contiguous()
    )


def reshape_and_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, num_kv_heads, block_size, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, num_kv_heads, block_size, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens], int64; -1 = skip
) -> None:
    if (
        _native_device_ok(key, value, key_cache, value_cache, slot_mapping)
        and key_cache.is_contiguous()
        and value_cache.is_contiguous()
    ):
        torch.ops.distllm_C.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
        return
    reference.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)


def paged_decode_attention(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, num_kv_heads, block_size, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, num_kv_heads, block_size, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq], int32
    context_lens: torch.Tensor,  # [num_seqs], int32; includes the token being decoded
    scale: float,
    out: torch.Tensor | None = None,  # [num_seqs, num_heads, head_dim]
) -> torch.Tensor:  # [num_seqs, num_heads, head_dim]
    native_cuda = (
        HAS_CUDA_NATIVE
        and _on_cuda(query, key_cache, value_cache, block_tables, context_lens, out)
        and _cuda_decode_ok(query, key_cache, value_cache)
    )
    if native_cuda or (
        HAS_NATIVE
        and _on_cpu(query, key_cache, value_cache, block_tables, context_lens, out)
        and query.dtype in _ATTN_DTYPES
        and _cache_ok(key_cache, value_cache)
    ):
        if out is None:
            out = torch.empty_like(query)
        torch.ops.distllm_C.paged_decode_attention(
            out,
            query,
            key_cache,
            value_cache,
            _i32(block_tables),
            _i32(context_lens),
            float(scale),
            0,
        )
        return out
    return reference.paged_decode_attention(
        query, key_cache, value_cache, block_tables, context_lens, scale, out=out
    )


def prefill_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    cu_seqlens_q: torch.Tensor,  # [num_seqs + 1], int32
    scale: float,
    key_cache: torch.Tensor | None = None,  # [num_blocks, num_kv_heads, block_size, head_dim]
    value_cache: torch.Tensor | None = None,
    block_tables: torch.Tensor | None = None,  # [num_seqs, max_blocks_per_seq], int32
    num_cached_tokens: torch.Tensor | None = None,  # [num_seqs], int32
    out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim]
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Causal attention over a ragged batch, optionally after a cached prefix (reference.py)."""
    use_cache = num_cached_tokens is not None and key_cache is not None
    tensors = (query, key, value, cu_seqlens_q, key_cache, value_cache, block_tables)
    cache_ok = not use_cache or (_cache_ok(key_cache, value_cache) and block_tables is not None)
    native_cuda = (
        HAS_CUDA_NATIVE
        and _on_cuda(*tensors, num_cached_tokens, out)
        and _cuda_prefill_ok(query, key, value, key_cache if use_cache else None)
        and cache_ok
    )
    if native_cuda or (
        HAS_NATIVE
        and query.dtype in _ATTN_DTYPES
        and _on_cpu(*tensors, num_cached_tokens, out)
        and cache_ok
    ):
        if out is None:
            out = torch.empty_like(query)
        torch.ops.distllm_C.prefill_attention(
            out,
            query,
            key,
            value,
            _i32(cu_seqlens_q),
            float(scale),
            key_cache if use_cache else None,
            value_cache if use_cache else None,
            _i32(block_tables) if use_cache else None,
            _i32(num_cached_tokens) if use_cache else None,
            0,
        )
        return out
    return reference.prefill_attention(
        query,
        key,
        value,
        cu_seqlens_q,
        scale,
        key_cache,
        value_cache,
        block_tables,
        num_cached_tokens,
        out=out,
    )


def copy_blocks(
    key_caches: list[torch.Tensor],  # per layer [num_blocks, num_kv_heads, block_size, head_dim]
    value_caches: list[torch.Tensor],
    block_mapping: torch.Tensor,  # [num_pairs, 2], int64: (src, dst); no block both src and dst
) -> None:
    caches = [*key_caches, *value_caches]
    if (
        _native_device_ok(*caches)
        and all(c.is_contiguous() for c in caches)
        and len({(c.shape, c.dtype, c.device) for c in caches}) <= 1
    ):
        torch.ops.distllm_C.copy_blocks(key_caches, value_caches, block_mapping)
        return
    reference.copy_blocks(key_caches, value_caches, block_mapping)


def swap_blocks(
    src: torch.Tensor,  # [num_blocks_src, ...]
    dst: torch.Tensor,  # [num_blocks_dst, ...]; may live on another device
    block_mapping: torch.Tensor,  # [num_pairs, 2], int64: (src block, dst block)
) -> None:
    if (
        HAS_NATIVE
        and (_on_cpu(src, dst) or (HAS_CUDA_NATIVE and (src.is_cuda or dst.is_cuda)))
        and src.dtype == dst.dtype
        and src.is_contiguous()
        and dst.is_contiguous()
        and src.shape[1:] == dst.shape[1:]
    ):
        torch.ops.distllm_C.swap_blocks(src, dst, block_mapping.cpu())
        return
    reference.swap_blocks(src, dst, block_mapping)


def migrate_blocks(
    src_caches: list[torch.Tensor],  # each [num_blocks_src, num_kv_heads_src, block_size, head_dim]
    dst_caches: list[torch.Tensor],  # each [num_blocks_dst, num_kv_heads_dst, block_size, head_dim]
    src_blocks: torch.Tensor,  # [num_pairs], int64
    dst_blocks: torch.Tensor,  # [num_pairs], int64
    src_heads: tuple[int, int],  # [start, end) of the source KV heads
    dst_head_start: int,
) -> None:
    """dst_caches[c][dst_blocks[j], dst_head_start + h] = src_caches[c][src_blocks[j],
    src_heads[0] + h] for every cache pair c, block pair j and head h (reference.py). On CUDA this
    is one kernel launch for all caches and blocks (the KV migration gather/scatter; a slab
    [2, num_layers, num_blocks, ...] is the list of its [num_blocks, ...] views)."""
    caches = [*src_caches, *dst_caches]
    if (
        HAS_CUDA_NATIVE
        and _on_cuda(*caches)
        and all(c.is_contiguous() for c in caches)
        and len({(c.shape, c.dtype) for c in src_caches}) <= 1
        and len({(c.shape, c.dtype, c.device) for c in dst_caches}) <= 1
        and len({c.dtype for c in caches}) <= 1
    ):
        torch.ops.distllm_C.migrate_blocks(
            src_caches,
            dst_caches,
            src_blocks,
            dst_blocks,
            src_heads[0],
            dst_head_start,
            src_heads[1] - src_heads[0],
        )
        return
    reference.migrate_blocks(
        src_caches, dst_caches, src_blocks, dst_blocks, src_heads, dst_head_start
    )
