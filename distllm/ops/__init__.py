"""The only module that touches distllm._C; falls back to ops/reference.py when it is absent."""
from __future__ import annotations

from distllm.ops.reference import (
    copy_blocks,
    paged_decode_attention,
    prefill_attention,
    reshape_and_cache,
    swap_blocks,
)

HAS_NATIVE = False

__all__ = ["HAS_NATIVE", "copy_blocks", "paged_decode_attention", "prefill_attention",
           "reshape_and_cache", "swap_blocks"]
