"""Per-batch attention metadata, handed to attention layers through one process-wide Context.

The model runner builds an `AttentionMetadata` for each forward and wraps the call in
`with forward_batch(meta, kv_caches):`; layers read it with `get_context()`. No nesting.
Token order inside a batch: all prefill tokens first (seq by seq), then one token per decode seq.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    num_prefills: int
    num_prefill_tokens: int
    num_decode_tokens: int  # one per decode sequence
    slot_mapping: torch.Tensor  # [num_tokens], int64; -1 = do not cache
    # prefill part (num_prefills > 0)
    cu_seqlens_q: torch.Tensor | None = None  # [num_prefills + 1], int32
    prefill_num_cached: torch.Tensor | None = None  # [num_prefills], int32; prefix in the cache
    prefill_block_tables: torch.Tensor | None = None  # [num_prefills, max_blocks], int32
    has_cached_prefix: bool = False  # any prefill_num_cached > 0
    # decode part (num_decode_tokens > 0)
    decode_block_tables: torch.Tensor | None = None  # [num_decodes, max_blocks], int32
    decode_context_lens: torch.Tensor | None = None  # [num_decodes], int32; incl. the new token

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens


@dataclass
class Context:
    metadata: AttentionMetadata | None = None
    # layer index -> (key_cache, value_cache), each [num_blocks, num_kv_heads, block_size, head_dim]
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None


_CONTEXT = Context()


def get_context() -> Context:
    return _CONTEXT


@contextmanager
def forward_batch(
    metadata: AttentionMetadata, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
) -> Iterator[Context]:
    assert _CONTEXT.metadata is None, "forward_batch contexts must not nest"
    _CONTEXT.metadata, _CONTEXT.kv_caches = metadata, kv_caches
    try:
        yield _CONTEXT
    finally:
        _CONTEXT.metadata, _CONTEXT.kv_caches = None, None
