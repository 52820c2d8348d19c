"""Colocated scheduler without a model: budget, batch cap, FCFS, preemption, abort, stopping."""
from __future__ import annotations

from distllm.core.request_state import Request, RequestStatus
from distllm.core.scheduler_output import ModelRunnerOutput
from distllm.sampling_params import SamplingParams
from tests.core.utils import (
    EOS,
    create_requests,
    create_scheduler,
    fake_output,
    run_step,
    run_to_completion,
)


def _ids(scheduled: list) -> list[str]:
    return [r.request_id for r in scheduled]


def test_first_step_prefills_whole_prompts_in_fcfs_order() -> None:
    scheduler = create_scheduler()
    for req in create_requests(3, prompt_len=[5, 3, 7]):
        scheduler.add_request(req)
    out = scheduler.schedule()
    assert _ids(out.prefills) == ["req0", "req1", "req2"] and out.decodes == []
    assert [r.num_tokens for r in out.prefills] == [5, 3, 7]
    assert all(r.num_computed_tokens == 0 for r in out.prefills)
    assert out.num_batched_tokens == 15


def test_token_budget_and_batch_cap_are_respected() -> None:
    scheduler = create_scheduler(max_num_seqs=3, max_num_batched_tokens=20)
    requests = create_requests(8, prompt_len=[8, 8, 8, 3, 12, 5, 9, 2], max_tokens=5)
    for req in requests:
        scheduler.add_request(req)
    outputs = run_to_completion(scheduler)
    for out in outputs:
        assert out.num_batched_tokens <= 20
        assert len(out.scheduled) <= 3
    assert all(req.num_output_tokens == 5 for req in requests)
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks


def test_admission_is_fcfs_even_when_a_later_request_would_fit() -> None:
    scheduler = create_scheduler(max_num_batched_tokens=10)
    for req in create_requests(3, prompt_len=[6, 8, 2]):
        scheduler.add_request(req)
    out = scheduler.schedule()
    assert _ids(out.prefills) == ["req0"]  # req1 does not fit the budget; req2 must not jump it


def test_prefill_batches_stop_at_the_saturation_length_past_the_first_prompt() -> None:
    scheduler = create_scheduler(max_num_batched_tokens=64, prefill_saturation_tokens=12)
    for req in create_requests(5, prompt_len=[20, 5, 4, 8, 3], max_tokens=2):
        scheduler.add_request(req)
    steps = [_ids(run_step(scheduler).prefills) for _ in range(3)]
    # the first prompt goes alone past the cap; then 5 + 4 <= 12 < 5 + 4 + 8; then 8 + 3
    assert steps == [["req0"], ["req1", "req2"], ["req3", "req4"]]
    chunked = create_scheduler(max_num_batched_tokens=16, enable_chunked_prefill=True,
                               prefill_saturation_tokens=4)  # NOTE: chunks use the budget only
    for req in create_requests(2, prompt_len=8):
        chunked.add_request(req)
    assert [r.num_tokens for r in chunked.schedule().prefills] == [8, 8]


def test_prefill_has_priority_then_all_running_decode() -> None:
    scheduler = create_scheduler(max_num_seqs=4)
    first = create_requests(2, prompt_len=4, max_tokens=10)
    for req in first:
        scheduler.add_request(req)
    run_step(scheduler)
    out = scheduler.schedule()
    assert _ids(out.decodes) == ["req0", "req1"] and out.prefills == []
    assert [r.token_ids for r in out.decodes] == [[7], [7]]
    assert [r.num_computed_tokens for r in out.decodes] == [4, 4]
    scheduler.update_from_output(out, fake_output(out))
    (late,) = create_requests(1, prompt_len=4, prefix="late")
    scheduler.add_request(late)
    out = scheduler.schedule()
    assert _ids(out.prefills) == ["late0"] and out.decodes == []


def test_requests_join_and_leave_the_running_batch() -> None:
    scheduler = create_scheduler(max_num_seqs=2)
    requests = create_requests(4, prompt_len=4, max_tokens=3)
    requests[0] = Request("short", [1, 2], SamplingParams(max_tokens=1, ignore_eos=True))
    for req in requests:
        scheduler.add_request(req)
    out = run_step(scheduler)
    assert _ids(out.prefills) == ["short", "req1"]
    assert requests[0].status is RequestStatus.FINISHED_LENGTH
    out = run_step(scheduler)  # the freed seat goes to req2 right away
    assert _ids(out.prefills) == ["req2"]
    assert "short" in out.finished_request_ids
    out = run_step(scheduler)
    assert _ids(out.decodes) == ["req1", "req2"]


def test_preemption_by_recompute_newest_first_and_readmission() -> None:
    # 6 blocks of 4 tokens; 3 requests of 8 prompt tokens take all 6 blocks.
    scheduler = create_scheduler(num_blocks=6, block_size=4)
    requests = create_requests(3, prompt_len=8, max_tokens=6)
    for req in requests:
        scheduler.add_request(req)
    run_step(scheduler)  # prefill all three, one token each
    out = scheduler.schedule()  # each needs a third block: the newest is preempted
    assert _ids(out.decodes) == ["req0", "req1"]
    assert requests[2].status is RequestStatus.PREEMPTED
    assert requests[2].num_preemptions == 1 and requests[2].block_table == []
    assert list(scheduler.waiting) == [requests[2]]
    scheduler.update_from_output(out, fake_output(out))
    run_to_completion(scheduler)
    assert all(req.num_output_tokens == 6 for req in requests)
    assert all(req.status is RequestStatus.FINISHED_LENGTH for req in requests)
    assert scheduler.block_manager.num_free_blocks == 6


def test_recomputed_prefill_includes_generated_tokens() -> None:
    scheduler = create_scheduler(num_blocks=4, block_size=4)
    requests = create_requests(2, prompt_len=8, max_tokens=4)
    for req in requests:
        scheduler.add_request(req)
    run_step(scheduler)
    run_step(scheduler)  # req1 preempted; req0 decodes
    assert requests[1].status is RequestStatus.PREEMPTED
    while requests[1].status is not RequestStatus.RUNNING:
        out = run_step(scheduler)
    (prefill,) = out.prefills
    assert prefill.request_id == "req1"
    assert prefill.token_ids == requests[1].prompt_token_ids + [7]  # prompt + its first token
    run_to_completion(scheduler)
    assert scheduler.block_manager.num_free_blocks == 4


def test_abort_frees_blocks_of_running_and_waiting_requests() -> None:
    scheduler = create_scheduler(max_num_seqs=1)
    running, waiting = create_requests(2, prompt_len=9, max_tokens=50)
    scheduler.add_request(running)
    scheduler.add_request(waiting)
    run_step(scheduler)
    assert running.block_table and not waiting.block_table
    scheduler.finish_requests(["req0", "req1", "unknown"], RequestStatus.FINISHED_ABORTED)
    assert running.status is RequestStatus.FINISHED_ABORTED
    assert waiting.status is RequestStatus.FINISHED_ABORTED
    assert not scheduler.has_unfinished_requests()
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks
    assert scheduler.schedule().finished_request_ids == ["req0", "req1"]


def test_abort_between_schedule_and_update_is_ignored() -> None:
    scheduler = create_scheduler()
    (req,) = create_requests(1)
    scheduler.add_request(req)
    out = scheduler.schedule()
    scheduler.finish_requests("req0", RequestStatus.FINISHED_ABORTED)
    assert scheduler.update_from_output(out, fake_output(out)) == []
    assert req.output_token_ids == []


def test_request_larger_than_the_cache_is_ignored_not_stuck() -> None:
    scheduler = create_scheduler(num_blocks=2, block_size=4)
    big, small = create_requests(2, prompt_len=[9, 3], max_tokens=2)
    scheduler.add_request(big)
    scheduler.add_request(small)
    run_to_completion(scheduler)
    assert big.status is RequestStatus.FINISHED_IGNORED and big.error
    assert small.status is RequestStatus.FINISHED_LENGTH


def _decode_one(token_ids: list[int], params: SamplingParams, max_model_len: int = 512) -> Request:
    scheduler = create_scheduler(max_model_len=max_model_len)
    req = Request("r", [5, 6, 7], params, eos_token_id=EOS)
    scheduler.add_request(req)
    for token_id in token_ids:
        out = scheduler.schedule()
        if not out.has_forward:
            break
        scheduler.update_from_output(out, ModelRunnerOutput({"r": token_id}))
    return req


def test_stop_conditions() -> None:
    eos = _decode_one([9, EOS, 9], SamplingParams(max_tokens=10))
    assert eos.status is RequestStatus.FINISHED_STOPPED and eos.output_token_ids == [9, EOS]
    ignored = _decode_one([9, EOS, 9], SamplingParams(max_tokens=3, ignore_eos=True))
    assert ignored.status is RequestStatus.FINISHED_LENGTH and ignored.num_output_tokens == 3
    stop_id = _decode_one([9, 4, 9], SamplingParams(max_tokens=10, stop_token_ids=[4]))
    assert stop_id.status is RequestStatus.FINISHED_STOPPED and stop_id.stop_reason == 4
    min_tok = _decode_one([EOS, 9, EOS], SamplingParams(max_tokens=10, min_tokens=2))
    assert min_tok.output_token_ids == [EOS, 9, EOS]
    capped = _decode_one([9] * 10, SamplingParams(max_tokens=10), max_model_len=5)
    assert capped.status is RequestStatus.FINISHED_LENGTH and capped.num_tokens == 5


def test_lifetime_records_colocated_events_in_order() -> None:
    scheduler = create_scheduler()
    (req,) = create_requests(1, max_tokens=3)
    scheduler.add_request(req)
    run_to_completion(scheduler)
    names = [event.value for event, _ in req.lifetime.events]
    assert names == ["arrival", "prefill_begin", "prefill_end", "decode_begin", "decode_end"]
    assert len(req.token_times) == 3


def test_stop_tokens_are_suppressed_until_min_tokens() -> None:
    scheduler = create_scheduler()
    params = SamplingParams(max_tokens=5, min_tokens=2, stop_token_ids=[4])
    scheduler.add_request(Request("r", [5, 6, 7], params, eos_token_id=EOS))
    suppressed = []
    for _ in range(3):
        out = scheduler.schedule()
        suppressed.append(out.scheduled[0].suppressed_token_ids)
        scheduler.update_from_output(out, fake_output(out))
    assert suppressed == [(4, EOS), (4, EOS), ()]
