"""Pipelined scheduling (pp > 1) without a model: steps in flight take disjoint requests, a request
in flight is neither rescheduled nor preempted, aborts in flight free blocks when the step is back,
and a random pipelined run with swaps, recomputes and aborts leaks no block."""
from __future__ import annotations

import random
from collections import deque

import pytest

from distllm.config import SchedulerConfig
from distllm.core.block_manager import AllocStatus, BlockManager
from distllm.core.colocated_scheduler import ColocatedScheduler
from distllm.core.decode_scheduler import DecodeScheduler
from distllm.core.request_state import RequestStatus
from distllm.core.scheduler import Scheduler
from distllm.core.scheduler_output import SchedulerOutput
from tests.core.utils import create_requests, fake_output, run_step


def _colocated(pp: int = 2, num_blocks: int = 64, num_swap_blocks: int = 0,
               mode: str = "recompute", chunked: bool = False,
               max_tokens: int = 512) -> ColocatedScheduler:
    config = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=max_tokens,
                             enable_chunked_prefill=chunked, preemption_mode=mode)
    return ColocatedScheduler(config, BlockManager(num_blocks, 4, 0.0, num_swap_blocks), 512,
                              num_micro_batches=pp)


def _ids(out: SchedulerOutput) -> list[str]:
    return [r.request_id for r in out.scheduled]


def _prefilled(scheduler: Scheduler, num_requests: int, max_tokens: int = 8) -> list:
    requests = create_requests(num_requests, prompt_len=8, max_tokens=max_tokens)
    for r in requests:
        scheduler.add_request(r)
    run_step(scheduler)  # one prefill step: every request has its first token
    return requests


def test_num_micro_batches_is_validated() -> None:
    with pytest.raises(ValueError, match="num_micro_batches"):
        _colocated(pp=0)


def test_two_decode_steps_back_to_back_take_disjoint_requests() -> None:
    scheduler = _colocated(pp=2)
    _prefilled(scheduler, 5)
    first, second = scheduler.schedule(), scheduler.schedule()
    assert _ids(first) == ["req0", "req1", "req2"]  # ceil(5 / 2): the oldest first
    assert _ids(second) == ["req3", "req4"]
    assert not scheduler.schedule().has_forward  # everything is in flight
    scheduler.update_from_output(first, fake_output(first))
    third = scheduler.schedule()
    assert _ids(third) == ["req0", "req1", "req2"]  # back: scheduled again, one position on
    assert [r.num_computed_tokens for r in third.decodes] == [9, 9, 9]
    scheduler.update_from_output(second, fake_output(second))
    scheduler.update_from_output(third, fake_output(third))
    assert [r.num_output_tokens for r in scheduler.running] == [3, 3, 3, 2, 2]


def test_pp1_decodes_every_running_request() -> None:
    scheduler = _colocated(pp=1)
    _prefilled(scheduler, 5)
    assert _ids(scheduler.schedule()) == [f"req{i}" for i in range(5)]


def test_request_in_flight_is_not_rescheduled_nor_its_prompt_chunk() -> None:
    scheduler = _colocated(pp=2, chunked=True, max_tokens=8)
    (long,) = create_requests(1, prompt_len=20)
    scheduler.add_request(long)
    first = scheduler.schedule()
    assert [(r.request_id, r.num_tokens) for r in first.prefills] == [("req0", 8)]
    assert scheduler.is_inflight(long)
    assert not scheduler.schedule().has_forward  # its next chunk needs this one's result
    with pytest.raises(ValueError, match="already running"):
        scheduler.add_request(long)
    scheduler.update_from_output(first, fake_output(first))
    second = scheduler.schedule()
    assert [(r.num_computed_tokens, r.num_tokens) for r in second.prefills] == [(8, 8)]


def test_abort_in_flight_frees_blocks_only_when_the_step_is_back() -> None:
    scheduler = _colocated(pp=2)
    requests = _prefilled(scheduler, 4)
    bm = scheduler.block_manager
    first = scheduler.schedule()  # req0, req1
    victim, blocks = requests[0], list(requests[0].block_table)
    free_before = bm.num_free_blocks
    scheduler.finish_requests("req0", RequestStatus.FINISHED_ABORTED)
    assert victim.status is RequestStatus.FINISHED_ABORTED
    assert "req0" not in scheduler.requests
    assert bm.num_free_blocks == free_before and scheduler.has_blocks_pending_free
    assert all(bm.device.ref_count(b) == 1 for b in blocks)  # still held for the step
    second = scheduler.schedule()
    assert _ids(second) == ["req2", "req3"] and "req0" in second.finished_request_ids
    assert all(b not in r.block_table for r in second.decodes for b in blocks)
    free_before = bm.num_free_blocks
    assert scheduler.update_from_output(first, fake_output(first)) == [requests[1]]
    assert not scheduler.has_blocks_pending_free
    assert bm.num_free_blocks == free_before + len(blocks)
    assert victim.output_token_ids == [7]  # the token of the step in flight is dropped


def test_release_step_of_a_lost_step_frees_pending_blocks() -> None:
    scheduler = _colocated(pp=2)
    requests = _prefilled(scheduler, 2)
    out = scheduler.schedule()  # req0 (ceil(2 / 2))
    scheduler.finish_requests("req0", RequestStatus.FINISHED_ABORTED)
    scheduler.schedule()  # req1
    scheduler.release_step(out)  # e.g. the worker failed: the step never comes back
    assert not scheduler.has_blocks_pending_free
    assert requests[0].block_table == []
    assert scheduler.block_manager.num_free_blocks == 64 - len(requests[1].block_table)


@pytest.mark.parametrize("mode, num_swap_blocks", [("swap", 32), ("recompute", 0)])
def test_preemption_never_touches_requests_in_flight(mode: str, num_swap_blocks: int) -> None:
    # 8 blocks of 4 tokens; 4 requests of 8 prompt tokens take all 8 after the prefill.
    scheduler = _colocated(pp=2, num_blocks=8, num_swap_blocks=num_swap_blocks, mode=mode)
    requests = _prefilled(scheduler, 4)
    first = scheduler.schedule()  # req0, req1 each take a third block... none is left
    held = {r.request_id: list(r.block_table) for r in requests[:2]}
    assert _ids(first) == ["req0", "req1"] and scheduler.block_manager.num_free_blocks == 0
    second = scheduler.schedule()  # req2 needs a block: req3 then req2 itself are preempted
    assert not second.has_forward
    assert requests[3].status is not RequestStatus.RUNNING
    assert requests[2].status is not RequestStatus.RUNNING
    assert {r.request_id: r.block_table for r in requests[:2]} == held  # in flight: untouched
    assert all(r.status is RequestStatus.RUNNING for r in requests[:2])
    if mode == "swap":
        assert second.blocks_to_swap_out
    scheduler.update_from_output(first, fake_output(first))
    assert [r.num_output_tokens for r in requests[:2]] == [2, 2]


def _check_inflight_blocks(scheduler: Scheduler, inflight: deque[SchedulerOutput]) -> None:
    """Blocks that a step in flight uses are held, and by no other live request."""
    owners: dict[int, set[str]] = {}  # block id -> ids of live requests holding it
    for request in scheduler.requests.values():
        if request.status is RequestStatus.RUNNING:
            for block_id in request.block_table:
                owners.setdefault(block_id, set()).add(request.request_id)
    seen: set[str] = set()
    for out in inflight:
        for scheduled in out.scheduled:
            assert scheduled.request_id not in seen, "a request in two steps in flight"
            seen.add(scheduled.request_id)
            for block_id in scheduled.block_table:
                assert scheduler.block_manager.device.ref_count(block_id) > 0
                assert owners.get(block_id, {scheduled.request_id}) <= {scheduled.request_id}


def _run_pipelined(scheduler: Scheduler, pp: int, rng: random.Random,
                   abort_p: float) -> int:
    """Keep up to pp steps in flight until every request finished; returns the peak."""
    inflight: deque[SchedulerOutput] = deque()
    peak = 0
    for _ in range(5_000):
        if not (scheduler.has_unfinished_requests() or inflight):
            return peak
        while len(inflight) < pp:
            out = scheduler.schedule()
            if not (out.has_forward or out.blocks_to_swap_out or out.blocks_to_swap_in):
                break
            inflight.append(out)
        peak = max(peak, len(inflight))
        _check_inflight_blocks(scheduler, inflight)
        live = list(scheduler.requests)
        if live and rng.random() < abort_p:
            scheduler.finish_requests(rng.choice(live), RequestStatus.FINISHED_ABORTED)
        if inflight:
            out = inflight.popleft()
            scheduler.update_from_output(out, fake_output(out))
    raise AssertionError("the pipelined run made no progress")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode, num_swap_blocks, chunked",
                         [("swap", 24, False), ("swap", 4, False), ("recompute", 0, True)])
def test_random_pipelined_runs_leak_no_block(seed: int, mode: str, num_swap_blocks: int,
                                             chunked: bool) -> None:
    rng = random.Random(seed)
    scheduler = _colocated(pp=2 + seed % 2, num_blocks=14, num_swap_blocks=num_swap_blocks,
                           mode=mode, chunked=chunked, max_tokens=24)
    requests = create_requests(12, prompt_len=[rng.randrange(2, 20) for _ in range(12)],
                               max_tokens=10)
    for r in requests:
        scheduler.add_request(r)
    peak = _run_pipelined(scheduler, scheduler.num_micro_batches, rng, abort_p=0.05)
    assert peak >= 2
    done = [r for r in requests if r.status is not RequestStatus.FINISHED_ABORTED]
    assert done and all(r.num_output_tokens == 10 for r in done)
    assert all(r.status.is_finished and not r.block_table for r in requests)
    assert scheduler.block_manager.num_free_blocks == 14
    assert scheduler.block_manager.num_free_swap_blocks == num_swap_blocks
    assert not scheduler.has_blocks_pending_free


def _decode(num_blocks: int, num_swap_blocks: int = 0) -> DecodeScheduler:
    config = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, preemption_mode="swap")
    return DecodeScheduler(config, BlockManager(num_blocks, 4, 0.0, num_swap_blocks), 512,
                           pull_threshold=1.0, num_micro_batches=2)


def _migrated(decode: DecodeScheduler, num_requests: int, prompt_len: int) -> list:
    requests = create_requests(num_requests, prompt_len=prompt_len, max_tokens=4)
    for r in requests:
        r.append_output_token(7, 0.0)  # token #1 came from the prefill instance
        r.num_computed_tokens = prompt_len
        decode.start_migration(r)
        decode.finish_migration(r.request_id)
    return requests


def test_decode_scheduler_shares_migrated_requests_among_micro_batches() -> None:
    decode = _decode(32)
    requests = _migrated(decode, 4, prompt_len=6)
    first, second = decode.schedule(), decode.schedule()
    assert _ids(first) == ["req0", "req1"] and _ids(second) == ["req2", "req3"]
    decode.finish_requests("req3", RequestStatus.FINISHED_ABORTED)
    held = decode.block_manager.num_free_blocks
    decode.update_from_output(first, fake_output(first))
    assert decode.block_manager.num_free_blocks == held and decode.has_blocks_pending_free
    decode.update_from_output(second, fake_output(second))
    assert decode.block_manager.num_free_blocks == held + 2  # req3's blocks, once it is back
    assert _run_pipelined(decode, 2, random.Random(0), abort_p=0.0) == 2
    assert [r.num_output_tokens for r in requests] == [4, 4, 4, 1]
    assert decode.block_manager.num_free_blocks == 32


def test_decode_pulls_wait_for_a_swap_out_in_flight() -> None:
    decode = _decode(7, num_swap_blocks=16)
    _migrated(decode, 3, prompt_len=7)  # 8 tokens: 2 blocks each, 6 of 7 used
    first, second = decode.schedule(), decode.schedule()  # req0 + req1, req2: no new block
    decode.update_from_output(first, fake_output(first))
    third = decode.schedule()  # req0 takes the last block; req1 has none left: swapped out
    assert _ids(third) == ["req0"] and third.blocks_to_swap_out
    decode.finish_requests("req1", RequestStatus.FINISHED_ABORTED)  # nothing swapped now
    (new,) = create_requests(1, prompt_len=3, prefix="new")
    assert decode.block_manager.can_allocate(new) is AllocStatus.OK
    # NOTE: the device blocks that swap-out freed are not copied out until its step is back
    assert decode.can_pull(new) is AllocStatus.LATER
    decode.update_from_output(second, fake_output(second))
    decode.update_from_output(third, fake_output(third))
    assert decode.can_pull(new) is AllocStatus.OK
