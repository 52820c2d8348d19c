"""Steps in flight on Ray: pipelined decode (pp=2 decode / colocated instances keep two
micro-batches in flight) and async scheduling (pp=1 decode / colocated instances schedule a decode
step while the previous one runs): greedy outputs equal transformers with requests joining and
finishing mid-run, two steps were really in flight, and an abort of a request whose step is in
flight leaks no block."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from distllm import LLM
from distllm.engine.stage_engine import StageEngine
from distllm.sampling_params import SamplingParams
from tests.disagg.conftest import ENGINE_KWARGS, greedy_params
from tests.disagg.test_placements import assert_all_blocks_free

PLACEMENTS = {
    "colocated-pp2": dict(mode="colocated", decode_pp=2),
    "p1-d-pp2": dict(mode="disaggregated", decode_pp=2),
    "colocated-async": dict(mode="colocated"),
    "p1-d1-async": dict(mode="disaggregated"),
}


@pytest.fixture(scope="module", params=list(PLACEMENTS))
def llm(request: pytest.FixtureRequest, ray_cluster: None, tiny_gqa: Path) -> Iterator[LLM]:
    llm = LLM(str(tiny_gqa), **ENGINE_KWARGS, **PLACEMENTS[request.param])
    yield llm
    llm.shutdown()


def _pipelined(llm: LLM) -> StageEngine:
    (inst,) = [i for i in llm.engine.instances if i.max_inflight == 2]
    assert inst.kind in ("decode", "colocated")
    return inst


def _run(llm: LLM, max_steps: int = 100_000) -> dict[str, list]:
    """Step until every request is done; final outputs by request id."""
    finals: dict[str, list] = {}
    for _ in range(max_steps):
        if not llm.engine.has_unfinished_requests():
            return finals
        for output in llm.engine.step():
            if output.finished:
                finals[output.request_id] = output
    raise AssertionError("the engine made no progress")


def test_staggered_requests_match_reference(llm: LLM, prompts: list[list[int]],
                                            reference: list[list[int]]) -> None:
    engine, params = llm.engine, greedy_params()
    for i in range(3):
        engine.add_request(f"a{i}", prompts[i], params[i])
    tokens = 0
    while tokens < 12:  # the first requests decode for a while before the others join
        tokens += sum(1 for _ in engine.step())
    for i in range(3, len(prompts)):
        engine.add_request(f"a{i}", prompts[i], params[i])
    finals = _run(llm)
    assert [finals[f"a{i}"].token_ids for i in range(len(prompts))] == reference
    assert all(o.error is None and o.finish_reason == "length" for o in finals.values())
    stats = _pipelined(llm).stats()
    assert stats["peak_inflight_steps"] == 2
    assert_all_blocks_free(llm)


def test_abort_of_a_request_in_flight_leaks_nothing(llm: LLM,
                                                    prompts: list[list[int]]) -> None:
    engine, inst = llm.engine, _pipelined(llm)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"b{i}", prompt, params)
    victim = None
    for _ in range(100_000):
        engine.step()
        if len(inst.inflight) == 2 and all(s.scheduler_output.decodes for s in inst.inflight):
            victim = inst.inflight[1].scheduler_output.decodes[0].request_id
            break
    assert victim is not None, "never had two decode steps in flight"
    engine.abort_request(victim)
    assert inst.scheduler.has_blocks_pending_free  # its step may still write its blocks
    assert engine.has_unfinished_requests()
    finals = _run(llm)
    assert finals[victim].finish_reason == "abort"
    others = [o for rid, o in finals.items() if rid != victim]
    assert len(others) == len(prompts) - 1
    assert all(len(o.token_ids) == 40 and o.finish_reason == "length" for o in others)
    assert_all_blocks_free(llm)
