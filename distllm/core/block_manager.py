"""Paged KV cache accounting: which block ids each request holds, with ref counts (pure Python).

A request's `block_table[i]` is the block id holding its tokens
[i * block_size, (i + 1) * block_size).
Device blocks back RUNNING requests; CPU (swap) blocks back SWAPPED ones. The block manager only
decides ids; the worker moves the data (`blocks_to_copy`, `blocks_to_swap_*` in SchedulerOutput).
"""
from __future__ import annotations

import enum
from collections import deque

from distllm.core.request_state import Request, RequestStatus


class AllocStatus(enum.Enum):
    OK = "ok"  # fits now
    LATER = "later"  # fits once other requests free blocks
    NEVER = "never"  # larger than the whole cache


class BlockAllocator:
    """A free list and ref counts over block ids [0, num_blocks)."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free_ids: deque[int] = deque(range(num_blocks))
        self._ref_counts = [0] * num_blocks  # block id -> number of holders

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_ids)

    def allocate(self) -> int:
        if not self._free_ids:
            raise RuntimeError("out of KV blocks: call can_allocate / can_append_slot first")
        block_id = self._free_ids.popleft()
        self._ref_counts[block_id] = 1
        return block_id

    def incref(self, block_id: int) -> None:
        assert self._ref_counts[block_id] > 0, f"block {block_id} is free"
        self._ref_counts[block_id] += 1

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]

    def free(self, block_id: int) -> None:
        assert self._ref_counts[block_id] > 0, f"double free of block {block_id}"
        self._ref_counts[block_id] -= 1
        if self._ref_counts[block_id] == 0:
            self._free_ids.append(block_id)


class BlockManager:
    """Allocates device blocks to requests, appends slots as they decode, swaps them to CPU.

    Args:
        num_blocks: device KV blocks.
        block_size: tokens per block.
        watermark: share of device blocks that admission (`can_allocate`, `can_swap_in`) keeps
            free, so running requests can still append slots.
        num_swap_blocks: CPU blocks for swapped-out requests (0 = no swapping).
    """

    def __init__(self, num_blocks: int, block_size: int, watermark: float = 0.01,
                 num_swap_blocks: int = 0) -> None:
        self.block_size = block_size
        self.device = BlockAllocator(num_blocks)
        self.swap = BlockAllocator(num_swap_blocks)
        self.watermark_blocks = int(watermark * num_blocks)

    @property
    def num_blocks(self) -> int:
        return self.device.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.device.num_free_blocks

    @property
    def num_free_swap_blocks(self) -> int:
        return self.swap.num_free_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, request: Request) -> AllocStatus:
        """Whether all of the request's tokens (prompt + outputs so far) fit in new blocks."""
        needed = self.num_blocks_for(request.num_tokens)
        if needed > self.num_blocks - self.watermark_blocks:
            return AllocStatus.NEVER
        if self.num_free_blocks - needed >= self.watermark_blocks:
            return AllocStatus.OK
        return AllocStatus.LATER

    def allocate(self, request: Request) -> None:
        assert not request.block_table, f"request {request.request_id} already holds blocks"
        needed = self.num_blocks_for(request.num_tokens)
        request.block_table = [self.device.allocate() for _ in range(needed)]

    def _append_needs(self, request: Request, ahead: int = 0) -> int:
        """Free blocks needed to write the token at position num_tokens - 1 + ahead."""
        if len(request.block_table) < self.num_blocks_for(request.num_tokens + ahead):
            return 1
        return 1 if self.device.ref_count(request.block_table[-1]) > 1 else 0

    def can_append_slot(self, request: Request, ahead: int = 0) -> bool:
        return self.num_free_blocks >= self._append_needs(request, ahead)

    def append_slot(self, request: Request, ahead: int = 0) -> tuple[int, int] | None:
        """Make room for the request's newest token (or, with `ahead`, for a token that many
        positions further, whose predecessors are being sampled in a step in flight). Returns a
        (src, dst) block copy when the last block was shared (copy-on-write), else None."""
        table = request.block_table
        if len(table) < self.num_blocks_for(request.num_tokens + ahead):
            table.append(self.device.allocate())
            return None
        last = table[-1]
        if self.device.ref_count(last) == 1:
            return None
        table[-1] = self.device.allocate()
        self.device.free(last)
        return last, table[-1]

    def fork(self, parent: Request, child: Request) -> None:
        """Let `child` share all of `parent`'s blocks (copy-on-write on append)."""
        for block_id in parent.block_table:
            self.device.incref(block_id)
        child.block_table = list(parent.block_table)

    def free(self, request: Request) -> None:
        """Release every block the request holds (device or CPU, by its status)."""
        allocator = self.swap if request.status is RequestStatus.SWAPPED else self.device
        for block_id in reversed(request.block_table):
            allocator.free(block_id)
        request.block_table = []

    def can_swap_out(self, request: Request) -> bool:
        return self.num_free_swap_blocks >= len(set(request.block_table))

    def swap_out(self, request: Request) -> list[tuple[int, int]]:
        """Move the request's blocks to CPU; returns (device block, CPU block) pairs to copy."""
        return self._move(request, self.device, self.swap)

    def can_swap_in(self, request: Request) -> AllocStatus:
        # NOTE: one extra block so the request can append its next token right after.
        needed = len(set(request.block_table)) + 1
        if needed > self.num_blocks - self.watermark_blocks:
            return AllocStatus.NEVER
        if self.num_free_blocks - needed >= self.watermark_blocks:
            return AllocStatus.OK
        return AllocStatus.LATER

    def swap_in(self, request: Request) -> list[tuple[int, int]]:
        """Move the request's blocks back to the device; returns (CPU block, device block) pairs."""
        return self._move(request, self.swap, self.device)

    def _move(self, request: Request, src: BlockAllocator,
              dst: BlockAllocator) -> list[tuple[int, int]]:
        mapping: dict[int, int] = {}  # src block id -> dst block id
        new_table = []
        for block_id in request.block_table:
            if block_id not in mapping:
                mapping[block_id] = dst.allocate()
            else:
                dst.incref(mapping[block_id])
            new_table.append(mapping[block_id])
            src.free(block_id)
        request.block_table = new_table
        return list(mapping.items())
