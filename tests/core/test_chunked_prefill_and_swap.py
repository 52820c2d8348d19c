"""Colocated scheduler options: chunked prefill (mixed batches) and preemption by swapping."""
from __future__ import annotations

from distllm.core.request_state import RequestStatus
from tests.core.utils import create_requests, create_scheduler, run_step, run_to_completion


def test_chunked_prefill_splits_prompts_to_fill_the_budget() -> None:
    scheduler = create_scheduler(max_num_batched_tokens=16, enable_chunked_prefill=True)
    long, short = create_requests(2, prompt_len=[30, 6], max_tokens=3)
    scheduler.add_request(long)
    scheduler.add_request(short)
    out = run_step(scheduler)
    assert [(r.request_id, r.num_tokens, r.sample) for r in out.prefills] == [("req0", 16, False)]
    assert long.num_computed_tokens == 16 and long.output_token_ids == []
    out = run_step(scheduler)  # the rest of req0 (14 tokens), then 2 tokens of req1
    assert [(r.request_id, r.num_computed_tokens, r.num_tokens, r.sample)
            for r in out.prefills] == [("req0", 16, 14, True), ("req1", 0, 2, False)]
    assert long.num_output_tokens == 1
    out = run_step(scheduler)  # decodes go first, then the remaining prompt chunk
    assert [r.request_id for r in out.decodes] == ["req0"]
    assert [(r.request_id, r.num_tokens, r.sample) for r in out.prefills] == [("req1", 4, True)]
    assert out.num_batched_tokens <= 16


def test_chunked_prefill_respects_limits_and_frees_every_block() -> None:
    scheduler = create_scheduler(max_num_seqs=3, max_num_batched_tokens=10, num_blocks=40,
                                 enable_chunked_prefill=True)
    requests = create_requests(6, prompt_len=[25, 3, 17, 8, 1, 12], max_tokens=4)
    for req in requests:
        scheduler.add_request(req)
    outputs = run_to_completion(scheduler)
    assert all(out.num_batched_tokens <= 10 and len(out.scheduled) <= 3 for out in outputs)
    assert any(out.prefills and out.decodes for out in outputs), "expected mixed batches"
    assert all(req.num_output_tokens == 4 for req in requests)
    assert scheduler.block_manager.num_free_blocks == 40


def test_swap_preemption_moves_blocks_and_brings_the_request_back() -> None:
    scheduler = create_scheduler(num_blocks=6, block_size=4, num_swap_blocks=8,
                                 preemption_mode="swap")
    requests = create_requests(3, prompt_len=8, max_tokens=6)
    for req in requests:
        scheduler.add_request(req)
    run_step(scheduler)
    victim_blocks = list(requests[2].block_table)
    out = run_step(scheduler)
    assert requests[2].status is RequestStatus.SWAPPED
    assert [device for device, _ in out.blocks_to_swap_out] == victim_blocks
    assert requests[2].num_computed_tokens == 8  # its KV is kept, not recomputed
    swapped_in = []
    while scheduler.has_unfinished_requests():
        out = run_step(scheduler)
        swapped_in += out.blocks_to_swap_in
        assert not any(r.request_id == "req2" for r in out.prefills), "swap must not recompute"
    assert len(swapped_in) >= len(victim_blocks)  # may swap out and in more than once
    assert all(req.num_output_tokens == 6 for req in requests)
    bm = scheduler.block_manager
    assert bm.num_free_blocks == 6 and bm.num_free_swap_blocks == 8


def test_swap_falls_back_to_recompute_when_swap_space_is_full() -> None:
    scheduler = create_scheduler(num_blocks=6, block_size=4, num_swap_blocks=1,
                                 preemption_mode="swap")
    requests = create_requests(3, prompt_len=8, max_tokens=6)
    for req in requests:
        scheduler.add_request(req)
    run_step(scheduler)
    out = run_step(scheduler)
    assert out.blocks_to_swap_out == []
    assert requests[2].status is RequestStatus.PREEMPTED
    run_to_completion(scheduler)
    assert scheduler.block_manager.num_free_blocks == 6
    assert scheduler.block_manager.num_free_swap_blocks == 1


def test_abort_of_a_swapped_request_frees_its_cpu_blocks() -> None:
    scheduler = create_scheduler(num_blocks=6, block_size=4, num_swap_blocks=8,
                                 preemption_mode="swap")
    requests = create_requests(3, prompt_len=8, max_tokens=6)
    for req in requests:
        scheduler.add_request(req)
    run_step(scheduler)
    run_step(scheduler)
    assert requests[2].status is RequestStatus.SWAPPED
    scheduler.finish_requests("req2", RequestStatus.FINISHED_ABORTED)
    assert scheduler.block_manager.num_free_swap_blocks == 8
    run_to_completion(scheduler)
    assert scheduler.block_manager.num_free_blocks == 6
