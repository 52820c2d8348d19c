"""LLMEngine and LLM behaviour beyond greedy decoding: seeded sampling, abort, metrics records."""
from __future__ import annotations

from pathlib import Path

import pytest

from distllm import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> LLM:
    return LLM(model=str(tiny_llama), num_kv_blocks=64, block_size=8, max_num_seqs=4)


def _free(llm: LLM) -> bool:
    return llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


def test_seeded_sampling_is_reproducible_regardless_of_batch(llm: LLM) -> None:
    seeded = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    (alone,) = llm.generate("Once upon a time", seeded, use_tqdm=False)
    others = SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True)
    batch = llm.generate(["Good morning", "Once upon a time", "Water boils at", "a"],
                         [others, seeded, others, others], use_tqdm=False)
    assert batch[1].token_ids == alone.token_ids
    (other_seed,) = llm.generate(
        "Once upon a time", SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=8,
                                           ignore_eos=True), use_tqdm=False)
    assert other_seed.token_ids != alone.token_ids
    assert _free(llm)


def test_abort_frees_blocks_and_reports_the_request(llm: LLM) -> None:
    engine = llm.engine
    params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)
    engine.add_request("keep", "Once upon a time", params)
    engine.add_request("drop", "Good morning", params)
    engine.step()
    engine.step()
    assert engine.stats()["num_running"] == 2
    engine.abort_request("drop")
    outputs = {o.request_id: o for o in engine.step()}
    assert outputs["drop"].finished and outputs["drop"].finish_reason == "abort"
    assert not outputs["keep"].finished
    while engine.has_unfinished_requests():
        done = [o for o in engine.step() if o.finished]
    assert done[0].request_id == "keep" and len(done[0].token_ids) == 50
    assert _free(llm)
    stats = engine.stats()
    assert stats["num_running"] == stats["num_waiting"] == 0
    assert stats["num_free_blocks"] == stats["num_blocks"]


def test_aborting_the_only_request_still_reports_it(llm: LLM) -> None:
    engine = llm.engine
    engine.add_request("only", "Good morning", SamplingParams(max_tokens=20))
    engine.step()
    engine.abort_request("only")
    assert engine.has_unfinished_requests()  # its final output is still due
    (out,) = engine.step()
    assert out.request_id == "only" and out.finish_reason == "abort"
    assert not engine.has_unfinished_requests() and _free(llm)


def test_request_output_converts_to_a_metrics_record(llm: LLM) -> None:
    (out,) = llm.generate("Good morning", SamplingParams(max_tokens=5, temperature=0.0,
                                                         ignore_eos=True), use_tqdm=False)
    record = out.to_record()
    assert record.ok and record.output_len == 5 and len(record.token_timestamps) == 5
    assert record.ttft >= 0 and record.tpot >= 0
    events = [e["event_type"] for e in out.lifetime.to_json()]
    assert events == ["arrival", "prefill_begin", "prefill_end", "decode_begin", "decode_end"]


def test_generate_rejects_mismatched_params(llm: LLM) -> None:
    with pytest.raises(ValueError, match="sampling params"):
        llm.generate(["a", "b"], [SamplingParams()], use_tqdm=False)
    with pytest.raises(TypeError, match="list of lists"):
        llm.generate([1, 2, 3], use_tqdm=False)


def test_llm_from_engine_config(tiny_llama: Path) -> None:
    from distllm.config import CacheConfig, EngineConfig, ModelConfig

    config = EngineConfig(ModelConfig(model=str(tiny_llama)), CacheConfig(num_kv_blocks=16))
    llm = LLM.from_engine_config(config)
    (out,) = llm.generate("a", SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)
    assert len(out.token_ids) == 3 and llm.engine.block_manager.num_blocks == 16
