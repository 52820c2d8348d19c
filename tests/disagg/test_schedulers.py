"""Prefill / decode schedulers and the migration plan, without a model or Ray: FCFS prefill
batches, back-pressure from unmigrated blocks, pull admission, aborts mid-migration, swap and
recompute on the decode side, and slab coverage for unequal TP/PP."""
from __future__ import annotations

import itertools

import pytest

from distllm.config import SchedulerConfig
from distllm.core.block_manager import AllocStatus, BlockManager
from distllm.core.decode_scheduler import DecodeScheduler
from distllm.core.prefill_scheduler import PrefillScheduler
from distllm.core.request_state import RequestStatus
from distllm.distributed.kv_transport import kv_head_range, plan_migration
from distllm.distributed.parallel_info import pp_layer_range
from distllm.request import LifecycleEvent
from tests.core.utils import create_requests, fake_output, run_step


def _prefill(num_blocks: int = 16, max_num_seqs: int = 8, max_tokens: int = 64,
             saturation: int | None = None) -> PrefillScheduler:
    config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_tokens,
                             prefill_saturation_tokens=saturation)
    return PrefillScheduler(config, BlockManager(num_blocks, 4, 0.0), 512)


def _decode(num_blocks: int = 16, num_swap_blocks: int = 0, mode: str = "recompute",
            threshold: float = 0.5) -> DecodeScheduler:
    config = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, preemption_mode=mode)
    return DecodeScheduler(config, BlockManager(num_blocks, 4, 0.0, num_swap_blocks), 512,
                           pull_threshold=threshold)


def _migrate(prefill: PrefillScheduler, decode: DecodeScheduler, request) -> list[int]:  # noqa: ANN001
    src = prefill.release(request)
    decode.start_migration(request)
    return src


def test_prefill_batches_fcfs_under_token_budget_and_samples_first_token() -> None:
    s = _prefill(max_tokens=20)
    requests = create_requests(3, prompt_len=8)
    for r in requests:
        s.add_request(r)
    out = run_step(s)
    assert [r.request_id for r in out.prefills] == ["req0", "req1"]  # 16 <= 20 < 24
    assert not out.decodes
    assert [r.num_output_tokens for r in requests] == [1, 1, 0]
    assert [r.request_id for r in s.pop_prefilled()] == ["req0", "req1"]
    assert requests[0].lifetime.get(LifecycleEvent.PREFILL_END) is not None
    assert requests[0].lifetime.get(LifecycleEvent.DECODE_BEGIN) is None
    assert not run_step(s).prefills or s.pop_prefilled()[0].request_id == "req2"


def test_prefill_batch_stops_at_the_saturation_length() -> None:
    s = _prefill(num_blocks=32, saturation=10)
    for r in create_requests(4, prompt_len=[12, 4, 4, 4]):
        s.add_request(r)
    batches = [[r.request_id for r in run_step(s).prefills] for _ in range(3)]
    assert batches == [["req0"], ["req1", "req2"], ["req3"]]  # 12 alone; 4 + 4 <= 10 < 12


def test_unmigrated_blocks_back_pressure_prefill() -> None:
    s = _prefill(num_blocks=5)
    for r in create_requests(3, prompt_len=8):  # 2 blocks each
        s.add_request(r)
    run_step(s)
    held = s.pop_prefilled()
    assert len(held) == 2 and s.block_manager.num_free_blocks == 1
    assert not run_step(s).prefills  # stalled until a pull frees blocks
    blocks = s.release(held[0])
    assert s.block_manager.num_free_blocks == 1  # still held while the transfer runs
    s.free_blocks(blocks)
    assert [r.request_id for r in run_step(s).prefills] == ["req2"]


def test_decode_pull_threshold_and_fit() -> None:
    prefill, decode = _prefill(num_blocks=64), _decode(num_blocks=8, threshold=0.5)
    requests = create_requests(3, prompt_len=8)
    for r in requests:
        prefill.add_request(r)
    run_step(prefill)
    assert decode.can_pull(requests[0]) is AllocStatus.OK
    _migrate(prefill, decode, requests[0])
    assert decode.can_pull(requests[1]) is AllocStatus.OK  # 3 blocks held < 4
    _migrate(prefill, decode, requests[1])
    assert decode.can_pull(requests[2]) is AllocStatus.LATER  # 6 >= 4 and no room
    big = create_requests(1, prompt_len=40, prefix="big")[0]
    assert decode.can_pull(big) is AllocStatus.NEVER


def test_migration_then_decode_to_completion_frees_everything() -> None:
    prefill, decode = _prefill(), _decode()
    request = create_requests(1, prompt_len=6, max_tokens=5)[0]
    prefill.add_request(request)
    run_step(prefill)
    src_blocks = _migrate(prefill, decode, request)
    assert not prefill.has_unfinished_requests()
    assert not decode.schedule().has_forward  # KV still in flight
    prefill.free_blocks(src_blocks)
    decode.finish_migration(request.request_id)
    out = run_step(decode)
    assert [r.num_computed_tokens for r in out.decodes] == [6]  # token #1's KV is computed here
    while decode.has_unfinished_requests():
        run_step(decode)
    assert request.status is RequestStatus.FINISHED_LENGTH and request.num_output_tokens == 5
    events = [e for e, _ in request.lifetime.events]
    assert events == list(LifecycleEvent)
    assert prefill.block_manager.num_free_blocks == 16 == decode.block_manager.num_free_blocks


def test_abort_mid_migration_frees_blocks_when_the_transfer_completes() -> None:
    prefill, decode = _prefill(), _decode()
    request = create_requests(1, prompt_len=6)[0]
    prefill.add_request(request)
    run_step(prefill)
    src_blocks = _migrate(prefill, decode, request)
    decode.finish_requests(request.request_id, RequestStatus.FINISHED_ABORTED)
    assert request.status is RequestStatus.FINISHED_ABORTED
    assert decode.block_manager.num_free_blocks < 16  # the transfer may still write them
    prefill.free_blocks(src_blocks)
    decode.finish_migration(request.request_id)
    assert not decode.has_unfinished_requests() and not decode.waiting
    assert decode.block_manager.num_free_blocks == 16 == prefill.block_manager.num_free_blocks
    assert request.status is RequestStatus.FINISHED_ABORTED


@pytest.mark.parametrize("mode, num_swap_blocks", [("swap", 16), ("swap", 0), ("recompute", 0)])
def test_decode_memory_pressure_swaps_or_recomputes(mode: str, num_swap_blocks: int) -> None:
    prefill, decode = _prefill(num_blocks=64), _decode(6, num_swap_blocks, mode, threshold=1.0)
    requests = create_requests(2, prompt_len=7, max_tokens=9)  # 2 blocks each at first
    for r in requests:
        prefill.add_request(r)
    run_step(prefill)
    for r in requests:
        prefill.free_blocks(_migrate(prefill, decode, r))
        decode.finish_migration(r.request_id)
    swapped = recomputed = 0
    for _ in range(100):
        if not decode.has_unfinished_requests():
            break
        out = decode.schedule()
        swapped += len(out.blocks_to_swap_out)
        recomputed += sum(r.num_computed_tokens == 0 for r in out.prefills)
        decode.update_from_output(out, fake_output(out))
    assert all(r.num_output_tokens == 9 for r in requests)
    assert (swapped > 0) == (num_swap_blocks > 0) and (recomputed > 0) == (num_swap_blocks == 0)
    assert decode.block_manager.num_free_blocks == 6
    assert decode.block_manager.num_free_swap_blocks == num_swap_blocks


@pytest.mark.parametrize("layers, kv_heads", [(4, 2), (4, 4), (3, 1), (5, 4)])
def test_migration_plan_covers_each_decode_slab_exactly_once(layers: int, kv_heads: int) -> None:
    for src_tp, src_pp, dst_tp, dst_pp in itertools.product([1, 2, 4], [1, 2], [1, 2, 4], [1, 3]):
        plan = plan_migration(layers, kv_heads, src_tp, src_pp, dst_tp, dst_pp)
        assert plan == sorted(plan, key=lambda t: (t.src, t.dst, t.layers, t.heads))
        for dst in range(dst_tp * dst_pp):
            need = {(layer, head)
                    for layer in range(*pp_layer_range(layers, dst // dst_tp, dst_pp))
                    for head in range(*kv_head_range(kv_heads, dst % dst_tp, dst_tp))}
            got = [(layer, head) for t in plan if t.dst == dst
                   for layer in range(*t.layers) for head in range(*t.heads)]
            assert sorted(got) == sorted(need)
        for t in plan:  # the sender holds what it sends
            assert pp_layer_range(layers, t.src // src_tp, src_pp)[0] <= t.layers[0]
            assert pp_layer_range(layers, t.src // src_tp, src_pp)[1] >= t.layers[1]
            lo, hi = kv_head_range(kv_heads, t.src % src_tp, src_tp)
            assert lo <= t.heads[0] and t.heads[1] <= hi
