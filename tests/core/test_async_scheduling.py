"""Async scheduling (lookahead) without a model: a decode in flight decodes one step ahead with
LAST_SAMPLED as its input, never past max_tokens or the model length, never by preempting; a
token in flight that ends a request drops the step ahead's token and frees the blocks once both
steps are back; and random runs with a fake deterministic model give the same tokens as
one-step-at-a-time scheduling and leak no block."""
from __future__ import annotations

import random
from collections import deque

import pytest

from distllm.config import SchedulerConfig
from distllm.core.block_manager import BlockManager
from distllm.core.colocated_scheduler import ColocatedScheduler
from distllm.core.decode_scheduler import DecodeScheduler
from distllm.core.request_state import Request, RequestStatus
from distllm.core.scheduler import Scheduler
from distllm.core.scheduler_output import LAST_SAMPLED, ModelRunnerOutput, SchedulerOutput
from tests.core.utils import EOS, create_requests, fake_output, run_step


def _scheduler(lookahead: bool = True, num_blocks: int = 64, num_swap_blocks: int = 0,
               mode: str = "recompute", chunked: bool = False,
               max_model_len: int = 512) -> ColocatedScheduler:
    config = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=64,
                             enable_chunked_prefill=chunked, preemption_mode=mode)
    return ColocatedScheduler(config, BlockManager(num_blocks, 4, 0.0, num_swap_blocks),
                              max_model_len, lookahead=lookahead)


def _prefilled(scheduler: Scheduler, num_requests: int, max_tokens: int = 8,
               ignore_eos: bool = True) -> list[Request]:
    requests = create_requests(num_requests, prompt_len=7, max_tokens=max_tokens,
                               ignore_eos=ignore_eos)
    for r in requests:
        scheduler.add_request(r)
    run_step(scheduler)  # one prefill step: every request has its first token
    return requests


def test_lookahead_needs_one_micro_batch() -> None:
    config = SchedulerConfig()
    with pytest.raises(ValueError, match="num_micro_batches == 1"):
        DecodeScheduler(config, BlockManager(8, 4), 64, num_micro_batches=2, lookahead=True)


def test_a_decode_in_flight_decodes_one_step_ahead() -> None:
    scheduler = _scheduler()
    requests = _prefilled(scheduler, 2)  # 7 prompt tokens + 1 output: 2 blocks of 4 each
    first = scheduler.schedule()
    assert [(r.token_ids, r.num_computed_tokens) for r in first.decodes] == [([7], 7)] * 2
    second = scheduler.schedule()  # both still in flight: one step ahead
    assert [(r.token_ids, r.num_computed_tokens) for r in second.decodes] == [
        ([LAST_SAMPLED], 8)] * 2
    assert all(len(r.block_table) == 3 for r in second.decodes)  # position 9 opens block 3
    assert not scheduler.schedule().has_forward  # one step ahead at most
    scheduler.update_from_output(first, fake_output(first, 5))
    assert scheduler.is_inflight(requests[0])  # its step ahead is still out...
    third = scheduler.schedule()  # ...and is the step the next one follows (steady state)
    assert [(r.token_ids, r.num_computed_tokens) for r in third.decodes] == [
        ([LAST_SAMPLED], 9)] * 2
    scheduler.update_from_output(second, fake_output(second, 6))
    scheduler.update_from_output(third, fake_output(third, 8))
    assert [r.output_token_ids for r in requests] == [[7, 5, 6, 8]] * 2
    assert [r.num_computed_tokens for r in requests] == [10, 10]
    fourth = scheduler.schedule()  # nothing in flight: the known token again
    assert [(r.token_ids, r.num_computed_tokens) for r in fourth.decodes] == [([8], 10)] * 2


def test_no_step_ahead_past_max_tokens_or_model_length() -> None:
    scheduler = _scheduler()
    (short,) = _prefilled(scheduler, 1, max_tokens=2)
    scheduler.schedule()  # samples output #2, the last one
    assert not scheduler.can_look_ahead(short) and not scheduler.schedule().has_forward
    scheduler = _scheduler(max_model_len=9)
    (long,) = _prefilled(scheduler, 1, max_tokens=50)  # 8 tokens; the next one is the 9th
    scheduler.schedule()
    assert not scheduler.schedule().has_forward


def test_min_tokens_counts_the_token_in_flight() -> None:
    scheduler = _scheduler()
    (request,) = create_requests(1, prompt_len=7, max_tokens=8, ignore_eos=False)
    request.sampling_params = request.sampling_params.__class__(
        max_tokens=8, min_tokens=2, temperature=0.0)
    scheduler.add_request(request)
    first = scheduler.schedule()
    assert first.prefills[0].suppressed_token_ids == (EOS,)  # output #1 of min 2
    scheduler.update_from_output(first, fake_output(first))
    second, ahead = scheduler.schedule(), scheduler.schedule()
    assert second.decodes[0].suppressed_token_ids == (EOS,)  # output #2
    assert ahead.decodes[0].suppressed_token_ids == ()  # output #3 may stop


def test_eos_in_flight_drops_the_token_ahead_and_frees_blocks_when_both_are_back() -> None:
    scheduler = _scheduler()
    requests = _prefilled(scheduler, 2, ignore_eos=False)
    bm = scheduler.block_manager
    first, second = scheduler.schedule(), scheduler.schedule()
    held = bm.num_blocks - bm.num_free_blocks
    out = ModelRunnerOutput({"req0": EOS, "req1": 5})
    assert scheduler.update_from_output(first, out) == requests
    assert requests[0].status is RequestStatus.FINISHED_STOPPED
    assert bm.num_blocks - bm.num_free_blocks == held  # the step ahead may still write them
    assert scheduler.has_blocks_pending_free
    third = scheduler.schedule()  # NOTE: the worker runs it after `second`, which has req0
    assert third.finished_request_ids == ["req0"]
    assert [r.request_id for r in third.decodes] == ["req1"]
    assert scheduler.update_from_output(second, fake_output(second, 6)) == [requests[1]]
    assert requests[0].output_token_ids == [7, EOS]  # the token ahead is dropped
    assert requests[0].block_table == [] and not scheduler.has_blocks_pending_free
    scheduler.update_from_output(third, fake_output(third, 8))
    assert requests[1].output_token_ids == [7, 5, 6, 8]


def test_no_block_means_no_step_ahead_and_no_preemption() -> None:
    # 5 blocks of 4 tokens: two requests of 7 prompt tokens + 1 output hold 2 blocks each.
    scheduler = _scheduler(num_blocks=5)
    requests = _prefilled(scheduler, 2)
    first = scheduler.schedule()  # position 7: within their second blocks
    assert [r.request_id for r in first.decodes] == ["req0", "req1"]
    ahead = scheduler.schedule()  # position 8: the last free block goes to req0, none to req1
    assert [(r.request_id, r.token_ids) for r in ahead.decodes] == [("req0", [LAST_SAMPLED])]
    assert not ahead.blocks_to_swap_out
    assert all(r.status is RequestStatus.RUNNING for r in requests)  # nobody preempted
    scheduler.update_from_output(first, fake_output(first))
    scheduler.update_from_output(ahead, fake_output(ahead))
    assert [r.num_output_tokens for r in requests] == [3, 2]


def _fake_model(out: SchedulerOutput, last: dict[str, int]) -> ModelRunnerOutput:
    """A deterministic 'model': the next token depends on the input token and its position; it
    resolves LAST_SAMPLED like the worker does."""
    sampled = {}
    for r in out.scheduled:
        token = last[r.request_id] if r.token_ids == [LAST_SAMPLED] else r.token_ids[-1]
        position = r.num_computed_tokens + r.num_tokens - 1
        if r.sample:
            nxt = (token * 31 + position * 7) % 41 + 2  # EOS (2) now and then
            nxt = 3 if nxt in r.suppressed_token_ids else nxt
            sampled[r.request_id] = nxt
    for r in out.decodes:
        last[r.request_id] = sampled[r.request_id]
    return ModelRunnerOutput(sampled)


def _run(scheduler: Scheduler, requests: list[Request], depth: int,
         rng: random.Random, abort_p: float) -> int:
    """Keep up to `depth` steps in flight until every request finished; returns the peak."""
    for r in requests:
        scheduler.add_request(r)
    inflight: deque[SchedulerOutput] = deque()
    last: dict[str, int] = {}
    peak = 0
    for _ in range(5_000):
        if not (scheduler.has_unfinished_requests() or inflight):
            return peak
        while len(inflight) < depth:
            out = scheduler.schedule()
            if not (out.has_forward or out.blocks_to_swap_out or out.blocks_to_swap_in):
                break
            inflight.append(out)
        peak = max(peak, len(inflight))
        live = list(scheduler.requests)
        if live and rng.random() < abort_p:
            scheduler.finish_requests(rng.choice(live), RequestStatus.FINISHED_ABORTED)
        if inflight:
            out = inflight.popleft()
            scheduler.update_from_output(out, _fake_model(out, last))
    raise AssertionError("the run made no progress")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode, num_swap_blocks, chunked",
                         [("swap", 24, False), ("swap", 4, False), ("recompute", 0, True)])
def test_random_runs_match_one_step_at_a_time_and_leak_no_block(
        seed: int, mode: str, num_swap_blocks: int, chunked: bool) -> None:
    rng = random.Random(seed)
    lens = [rng.randrange(2, 20) for _ in range(12)]
    outputs = []
    for lookahead in (False, True):
        scheduler = _scheduler(lookahead, num_blocks=14, num_swap_blocks=num_swap_blocks,
                               mode=mode, chunked=chunked)
        requests = create_requests(12, prompt_len=lens, max_tokens=10, ignore_eos=False)
        peak = _run(scheduler, requests, 2 if lookahead else 1, rng, abort_p=0.0)
        assert peak == (2 if lookahead else 1)
        assert all(r.status.is_finished and not r.block_table for r in requests)
        assert scheduler.block_manager.num_free_blocks == 14
        assert scheduler.block_manager.num_free_swap_blocks == num_swap_blocks
        assert not scheduler.has_blocks_pending_free
        outputs.append([r.output_token_ids for r in requests])
    assert outputs[0] == outputs[1]
    assert any(out[-1] == EOS and len(out) < 10 for out in outputs[1])  # some stopped early


@pytest.mark.parametrize("seed", range(4))
def test_random_runs_with_aborts_leak_no_block(seed: int) -> None:
    rng = random.Random(seed)
    scheduler = _scheduler(num_blocks=14, num_swap_blocks=8, mode="swap")
    requests = create_requests(12, prompt_len=[rng.randrange(2, 20) for _ in range(12)],
                               max_tokens=12, ignore_eos=seed % 2 == 0)
    assert _run(scheduler, requests, 2, rng, abort_p=0.3) == 2
    assert any(r.status is RequestStatus.FINISHED_ABORTED for r in requests)
    assert all(r.status.is_finished and not r.block_table for r in requests)
    assert scheduler.block_manager.num_free_blocks == 14
    assert scheduler.block_manager.num_free_swap_blocks == 8
    assert not scheduler.has_blocks_pending_free
