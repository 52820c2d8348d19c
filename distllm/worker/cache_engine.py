"""KV cache tensors of one worker: per-layer paged device caches plus CPU swap space."""
from __future__ import annotations

import torch

from distllm import ops

# layer index -> (key_cache, value_cache), each [num_blocks, num_kv_heads, block_size, head_dim]
KVCaches = list[tuple[torch.Tensor, torch.Tensor]]


def block_bytes(num_layers: int, num_kv_heads: int, head_dim: int, block_size: int,
                dtype: torch.dtype) -> int:
    """Bytes one block takes over all layers, keys and values."""
    element_size = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * num_kv_heads * block_size * head_dim * element_size


class CacheEngine:
    """Allocates the caches once and moves blocks on the scheduler's orders."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int,
                 num_blocks: int, num_swap_blocks: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.num_blocks = num_blocks
        self.num_swap_blocks = num_swap_blocks
        shape = (num_kv_heads, block_size, head_dim)
        self.device_caches: KVCaches = [
            (torch.zeros((num_blocks, *shape), dtype=dtype, device=device),
             torch.zeros((num_blocks, *shape), dtype=dtype, device=device))
            for _ in range(num_layers)]
        pin = device.type == "cuda"
        self.swap_caches: KVCaches = [
            (torch.zeros((num_swap_blocks, *shape), dtype=dtype, pin_memory=pin),
             torch.zeros((num_swap_blocks, *shape), dtype=dtype, pin_memory=pin))
            for _ in range(num_layers)] if num_swap_blocks else []

    def copy(self, pairs: list[tuple[int, int]]) -> None:
        """Copy device blocks (src, dst) in every layer (copy-on-write)."""
        if not pairs:
            return
        mapping = torch.tensor(pairs, dtype=torch.int64)  # [num_pairs, 2]
        keys = [k for k, _ in self.device_caches]
        values = [v for _, v in self.device_caches]
        ops.copy_blocks(keys, values, mapping.to(keys[0].device))

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """(device block, CPU block) pairs."""
        self._swap(self.device_caches, self.swap_caches, pairs)

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """(CPU block, device block) pairs."""
        self._swap(self.swap_caches, self.device_caches, pairs)

    @staticmethod
    def _swap(src: KVCaches, dst: KVCaches, pairs: list[tuple[int, int]]) -> None:
        if not pairs:
            return
        mapping = torch.tensor(pairs, dtype=torch.int64)  # [num_pairs, 2]
        for (src_k, src_v), (dst_k, dst_v) in zip(src, dst, strict=True):
            ops.swap_blocks(src_k, dst_k, mapping)
            ops.swap_blocks(src_v, dst_v, mapping)
