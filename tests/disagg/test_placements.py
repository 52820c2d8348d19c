"""Greedy outputs of the Ray engine equal transformers and the in-process colocated engine for
several placements (unequal TP/PP between prefill and decode, two prefill instances, colocated
on Ray); lifecycle timestamps are complete and ordered; every block is free afterwards."""
from __future__ import annotations

from pathlib import Path

import pytest

from distllm import LLM
from distllm.request import LifecycleEvent
from tests.disagg.conftest import ENGINE_KWARGS, greedy_params

PLACEMENTS = {
    "p1-d1": dict(mode="disaggregated"),
    "p1-d1-sync": dict(mode="disaggregated", async_scheduling=False),  # one step at a time
    "p-tp2-d1": dict(mode="disaggregated", prefill_tp=2),  # KV over shared memory (auto, CPU)
    "p-tp2-d1-gloo": dict(mode="disaggregated", prefill_tp=2, kv_transport="gloo"),
    "p-pp2-d-tp2": dict(mode="disaggregated", prefill_pp=2, decode_tp=2),
    "2p-1d": dict(mode="disaggregated", num_prefill_instances=2),
    "colocated-tp2": dict(mode="colocated", decode_tp=2),
    # steps as a Ray task per worker instead of the step channel (instances with pp = 1)
    "p1-d1-ray": dict(mode="disaggregated", worker_rpc="ray"),
    "colocated-tp2-ray": dict(mode="colocated", decode_tp=2, worker_rpc="ray"),
}


def assert_all_blocks_free(llm: LLM) -> None:
    for name, stats in llm.engine.stats()["instances"].items():
        assert stats["num_free_blocks"] == stats["num_blocks"], name
        assert stats["num_free_swap_blocks"] is not None
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_outputs_match_reference(ray_cluster: None, tiny_gqa: Path, prompts: list[list[int]],
                                 reference: list[list[int]], placement: str) -> None:
    llm = LLM(str(tiny_gqa), **ENGINE_KWARGS, **PLACEMENTS[placement])
    try:
        outputs = llm.generate(prompts, greedy_params(), use_tqdm=False)
        assert [o.token_ids for o in outputs] == reference
        assert all(o.error is None and o.finish_reason == "length" for o in outputs)
        disaggregated = PLACEMENTS[placement]["mode"] == "disaggregated"
        for o in outputs:
            events = [e for e, _ in o.lifetime.events]
            if disaggregated:
                assert events == list(LifecycleEvent)
            times = [t for _, t in o.lifetime.events]
            assert times == sorted(times)
            assert len(o.token_times) == len(o.token_ids)
        if disaggregated:
            dims_bytes = 2 * 4 * 2 * 16 * 4  # K+V x layers x KV heads x head_dim x fp32
            blocks = sum(-(-len(p) // 8) for p in prompts)
            assert llm.engine.stats()["migrated_bytes"] == blocks * 8 * dims_bytes
        else:
            assert llm.engine.stats()["migrated_bytes"] == 0
        assert_all_blocks_free(llm)
        rpc = PLACEMENTS[placement].get("worker_rpc", "channel")
        for inst in llm.engine.instances:
            assert (inst.channels is not None) == (rpc == "channel" and inst.pp == 1), inst.name
    finally:
        llm.shutdown()
