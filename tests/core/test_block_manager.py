"""Block manager: allocation, watermark, slot appends, ref counts, swap, every block freed."""
from __future__ import annotations

import pytest

from distllm.core.block_manager import AllocStatus, BlockManager
from distllm.core.request_state import RequestStatus
from tests.core.utils import create_requests


def test_allocate_and_free_returns_every_block() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    a, b = create_requests(2, prompt_len=[5, 8])
    bm.allocate(a)
    bm.allocate(b)
    assert len(a.block_table) == 2 and len(b.block_table) == 2
    assert len(set(a.block_table) | set(b.block_table)) == 4
    assert bm.num_free_blocks == 6
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 10 and a.block_table == [] and b.block_table == []


def test_can_allocate_respects_watermark_and_capacity() -> None:
    bm = BlockManager(num_blocks=10, block_size=4, watermark=0.2)  # 2 blocks held back
    (fits,) = create_requests(1, prompt_len=32)  # 8 blocks
    (too_big,) = create_requests(1, prompt_len=33)  # 9 blocks > 10 - 2
    assert bm.can_allocate(fits) is AllocStatus.OK
    assert bm.can_allocate(too_big) is AllocStatus.NEVER
    bm.allocate(fits)
    (small,) = create_requests(1, prompt_len=1)
    assert bm.can_allocate(small) is AllocStatus.LATER  # would dip below the watermark
    bm.free(fits)
    assert bm.can_allocate(small) is AllocStatus.OK


def test_append_slot_allocates_only_at_block_boundaries() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    (req,) = create_requests(1, prompt_len=4)
    bm.allocate(req)
    assert len(req.block_table) == 1
    req.append_output_token(7, 0.0)  # 5th token -> needs a second block
    assert bm.can_append_slot(req)
    assert bm.append_slot(req) is None
    assert len(req.block_table) == 2
    req.append_output_token(7, 0.0)  # 6th token fits in block 2
    assert bm.append_slot(req) is None and len(req.block_table) == 2
    assert bm.num_free_blocks == 2


def test_can_append_slot_false_when_full() -> None:
    bm = BlockManager(num_blocks=1, block_size=4)
    (req,) = create_requests(1, prompt_len=4)
    bm.allocate(req)
    req.append_output_token(7, 0.0)
    assert not bm.can_append_slot(req)
    with pytest.raises(RuntimeError):
        bm.append_slot(req)


def test_fork_shares_blocks_and_copies_on_write() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    parent, child = create_requests(2, prompt_len=6)
    bm.allocate(parent)
    bm.fork(parent, child)
    assert child.block_table == parent.block_table and bm.num_free_blocks == 6
    child.append_output_token(7, 0.0)  # 7th token goes into the shared second block
    src, dst = bm.append_slot(child)
    assert src == parent.block_table[1] and dst == child.block_table[1] and src != dst
    assert child.block_table[0] == parent.block_table[0]
    bm.free(parent)
    assert bm.num_free_blocks == 8 - 2  # child still holds the shared first block + its copy
    bm.free(child)
    assert bm.num_free_blocks == 8


def test_swap_out_and_in_round_trip() -> None:
    bm = BlockManager(num_blocks=6, block_size=4, num_swap_blocks=4)
    (req,) = create_requests(1, prompt_len=10)  # 3 blocks
    bm.allocate(req)
    device_blocks = list(req.block_table)
    assert bm.can_swap_out(req)
    pairs = bm.swap_out(req)
    req.status = RequestStatus.SWAPPED
    assert [p[0] for p in pairs] == device_blocks
    assert bm.num_free_blocks == 6 and bm.num_free_swap_blocks == 1
    assert bm.can_swap_in(req) is AllocStatus.OK
    back = bm.swap_in(req)
    req.status = RequestStatus.RUNNING
    assert [p[0] for p in back] == [p[1] for p in pairs]
    assert bm.num_free_swap_blocks == 4 and bm.num_free_blocks == 3
    bm.free(req)
    assert bm.num_free_blocks == 6


def test_double_free_is_caught() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    (req,) = create_requests(1, prompt_len=2)
    bm.allocate(req)
    table = list(req.block_table)
    bm.free(req)
    req.block_table = table
    with pytest.raises(AssertionError):
        bm.free(req)
