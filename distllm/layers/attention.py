"""Paged attention layer: writes the new K/V into this layer's cache slots, then runs prefill
attention on the prefill tokens and paged decode attention on the decode tokens (distllm.ops).

Without a forward_batch context the layer treats the input as one causal prompt and caches
nothing (handy for smoke tests and memory profiling runs)."""
from __future__ import annotations

import torch
from torch import nn

from distllm import ops
from distllm.layers.context import AttentionMetadata, get_context


class Attention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int,
                 layer_idx: int, cache_index: int | None = None) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.scale = num_heads, head_dim, scale
        self.num_kv_heads, self.layer_idx = num_kv_heads, layer_idx
        # NOTE: kv_caches holds this pipeline stage's layers only: index = layer - start_layer
        self.cache_index = layer_idx if cache_index is None else cache_index

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads * head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads * head_dim]
        v: torch.Tensor,  # [num_tokens, num_kv_heads * head_dim]
    ) -> torch.Tensor:  # [num_tokens, num_heads * head_dim]
        n = q.shape[0]
        q = q.view(n, self.num_heads, self.head_dim)
        k = k.view(n, self.num_kv_heads, self.head_dim)
        v = v.view(n, self.num_kv_heads, self.head_dim)
        ctx = get_context()
        meta = ctx.metadata
        if meta is None:
            cu = torch.tensor([0, n], dtype=torch.int32, device=q.device)
            return ops.prefill_attention(q, k, v, cu, self.scale).view(n, -1)
        if n != meta.num_tokens:
            raise ValueError(f"attention got {n} tokens, metadata says {meta.num_tokens}")
        key_cache = value_cache = None
        if ctx.kv_caches:
            key_cache, value_cache = ctx.kv_caches[self.cache_index]
            ops.reshape_and_cache(k, v, key_cache, value_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        self._prefill(q, k, v, key_cache, value_cache, meta, out)
        self._decode(q, key_cache, value_cache, meta, out)
        return out.view(n, -1)

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 key_cache: torch.Tensor | None, value_cache: torch.Tensor | None,
                 meta: AttentionMetadata, out: torch.Tensor) -> None:
        p = meta.num_prefill_tokens
        if p == 0:
            return
        if meta.has_cached_prefix:
            if key_cache is None:
                raise ValueError("has_cached_prefix needs kv_caches in the forward_batch context")
            ops.prefill_attention(q[:p], k[:p], v[:p], meta.cu_seqlens_q, self.scale,
                                  key_cache, value_cache, meta.prefill_block_tables,
                                  meta.prefill_num_cached, out=out[:p])
        else:
            ops.prefill_attention(q[:p], k[:p], v[:p], meta.cu_seqlens_q, self.scale,
                                  out=out[:p])

    def _decode(self, q: torch.Tensor, key_cache: torch.Tensor | None,
                value_cache: torch.Tensor | None, meta: AttentionMetadata,
                out: torch.Tensor) -> None:
        if meta.num_decode_tokens == 0:
            return
        if key_cache is None:
            raise ValueError("decode tokens need kv_caches in the forward_batch context")
        p = meta.num_prefill_tokens
        ops.paged_decode_attention(q[p:], key_cache, value_cache, meta.decode_block_tables,
                                   meta.decode_context_lens, self.scale, out=out[p:])
