"""Pure-torch reference ops: the fallback when distllm._C is absent, and the test oracle.

Paged KV cache layout (one pair per layer):
    key_cache, value_cache: [num_blocks, num_kv_heads, block_size, head_dim]
A slot is `block_id * block_size + offset`; slot -1 means "do not write" (padding).
Attention math runs in fp32 and returns the query's dtype.
"""
from __future__ import annotations

import torch


def reshape_and_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, num_kv_heads, block_size, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, num_kv_heads, block_size, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens], int64
) -> None:
    block_size = key_cache.shape[2]
    mask = slot_mapping >= 0
    slots = slot_mapping[mask].long()
    blocks, offsets = slots // block_size, slots % block_size
    key_cache[blocks, :, offsets] = key[mask].to(key_cache.dtype)
    value_cache[blocks, :, offsets] = value[mask].to(value_cache.dtype)


def gather_cached_kv(
    cache: torch.Tensor,  # [num_blocks, num_kv_heads, block_size, head_dim]
    block_table: torch.Tensor,  # [max_blocks_per_seq], int32
    length: int,
) -> torch.Tensor:  # [num_kv_heads, length, head_dim]
    block_size = cache.shape[2]
    num_blocks = (length + block_size - 1) // block_size
    blocks = cache[block_table[:num_blocks].long()]  # [nb, kvh, bs, d]
    kvh, d = cache.shape[1], cache.shape[3]
    return blocks.permute(1, 0, 2, 3).reshape(kvh, num_blocks * block_size, d)[:, :length]


def _attend(
    q: torch.Tensor,  # [num_heads, q_len, head_dim], fp32
    k: torch.Tensor,  # [num_kv_heads, kv_len, head_dim], fp32
    v: torch.Tensor,  # [num_kv_heads, kv_len, head_dim], fp32
    scale: float,
    q_offset: int,  # query i sits at kv position q_offset + i (causal)
) -> torch.Tensor:  # [q_len, num_heads, head_dim]
    group = q.shape[0] // k.shape[0]
    k = k.repeat_interleave(group, dim=0)
    v = v.repeat_interleave(group, dim=0)
    scores = torch.matmul(q, k.transpose(1, 2)) * scale  # [h, q_len, kv_len]
    q_pos = torch.arange(q.shape[1], device=q.device).unsqueeze(1) + q_offset
    kv_pos = torch.arange(k.shape[1], device=q.device).unsqueeze(0)
    scores = scores.masked_fill(kv_pos > q_pos, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v).transpose(0, 1)


def paged_decode_attention(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, num_kv_heads, block_size, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, num_kv_heads, block_size, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq], int32
    context_lens: torch.Tensor,  # [num_seqs], int32; includes the token being decoded
    scale: float,
    out: torch.Tensor | None = None,  # [num_seqs, num_heads, head_dim]
) -> torch.Tensor:  # [num_seqs, num_heads, head_dim]
    if out is None:
        out = torch.empty_like(query)
    for i in range(query.shape[0]):
        n = int(context_lens[i])
        k = gather_cached_kv(key_cache, block_tables[i], n).float()
        v = gather_cached_kv(value_cache, block_tables[i], n).float()
        q = query[i].float().unsqueeze(1)  # [h, 1, d]
        out[i] = _attend(q, k, v, scale, q_offset=n - 1)[0].to(out.dtype)
    return out


def prefill_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]; the new tokens of every prompt
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    cu_seqlens_q: torch.Tensor,  # [num_seqs + 1], int32; new tokens of seq i: [cu[i], cu[i+1])
    scale: float,
    key_cache: torch.Tensor | None = None,  # [num_blocks, num_kv_heads, block_size, head_dim]
    value_cache: torch.Tensor | None = None,
    block_tables: torch.Tensor | None = None,  # [num_seqs, max_blocks_per_seq], int32
    num_cached_tokens: torch.Tensor | None = None,  # [num_seqs], int32; prefix already cached
    out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim]
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Causal attention over a ragged batch. Seq i's new tokens attend to its first
    `num_cached_tokens[i]` tokens, read from the paged cache, then causally to each other."""
    if out is None:
        out = torch.empty_like(query)
    for i in range(cu_seqlens_q.shape[0] - 1):
        s, e = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1])
        c = 0 if num_cached_tokens is None else int(num_cached_tokens[i])
        k, v = key[s:e].transpose(0, 1).float(), value[s:e].transpose(0, 1).float()
        if c > 0:
            k = torch.cat([gather_cached_kv(key_cache, block_tables[i], c).float(), k], dim=1)
            v = torch.cat([gather_cached_kv(value_cache, block_tables[i], c).float(), v], dim=1)
        q = query[s:e].transpose(0, 1).float()
        out[s:e] = _attend(q, k, v, scale, q_offset=c).to(out.dtype)
    return out


def copy_blocks(
    key_caches: list[torch.Tensor],  # per layer [num_blocks, num_kv_heads, block_size, head_dim]
    value_caches: list[torch.Tensor],
    block_mapping: torch.Tensor,  # [num_pairs, 2], int64: (src, dst)
) -> None:
    src, dst = block_mapping[:, 0].long(), block_mapping[:, 1].long()
    for k, v in zip(key_caches, value_caches, strict=True):
        k[dst] = k[src]
        v[dst] = v[src]


def swap_blocks(
    src: torch.Tensor,  # [num_blocks_src, ...]
    dst: torch.Tensor,  # [num_blocks_dst, ...]; may live on another device
    block_mapping: torch.Tensor,  # [num_pairs, 2], int64: (src block, dst block)
) -> None:
    s, d = block_mapping[:, 0].long(), block_mapping[:, 1].long()
    dst[d.to(dst.device)] = src[s.to(src.device)].to(dst.device)


def migrate_blocks(
    src_caches: list[torch.Tensor],  # each [num_blocks_src, num_kv_heads_src, block_size, head_dim]
    dst_caches: list[torch.Tensor],  # each [num_blocks_dst, num_kv_heads_dst, block_size, head_dim]
    src_blocks: torch.Tensor,  # [num_pairs], int64
    dst_blocks: torch.Tensor,  # [num_pairs], int64
    src_heads: tuple[int, int],  # [start, end) of the source KV heads
    dst_head_start: int,
) -> None:
    """Copies KV heads [src_heads) of src blocks into heads [dst_head_start, ...) of dst blocks,
    pairwise over the two cache lists (KV migration gather/scatter)."""
    n = src_heads[1] - src_heads[0]
    s, d = src_blocks.long(), dst_blocks.long()
    for src, dst in zip(src_caches, dst_caches, strict=True):
        part = src[s.to(src.device), src_heads[0] : src_heads[1]]
        dst[d.to(dst.device), dst_head_start : dst_head_start + n] = part.to(dst.device)
