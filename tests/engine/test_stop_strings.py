"""Stop strings end a request and are trimmed from its text; other engine-level stop rules."""
from __future__ import annotations

from pathlib import Path

import pytest

from distllm import LLM, SamplingParams
from distllm.engine.output_processor import find_stop_string

PROMPT = "The weather today is"


def test_find_stop_string_only_looks_at_new_text() -> None:
    assert find_stop_string("hello world", 5, ("world",)) == (6, "world")
    assert find_stop_string("hello world", 5, ("o w",)) == (4, "o w")  # spans old and new text
    assert find_stop_string("hello world", 2, ("hello",)) is None  # matched before: not new
    assert find_stop_string("abcabc", 3, ("c", "bc")) == (4, "bc")


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> LLM:
    return LLM(model=str(tiny_llama), num_kv_blocks=64, block_size=8)


def _greedy(max_tokens: int = 24, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kwargs)


def test_stop_string_trims_the_text_and_stops(llm: LLM) -> None:
    (full,) = llm.generate(PROMPT, _greedy(), use_tqdm=False)
    text = full.text
    assert len(text) > 8, "the tiny model should produce some text"
    stop = text[len(text) // 2:len(text) // 2 + 3]
    (out,) = llm.generate(PROMPT, _greedy(stop=[stop]), use_tqdm=False)
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == text[:text.index(stop)]
    assert len(out.token_ids) < len(full.token_ids)
    assert out.token_ids == full.token_ids[:len(out.token_ids)]
    (kept,) = llm.generate(PROMPT, _greedy(stop=[stop], include_stop_str_in_output=True),
                           use_tqdm=False)
    assert kept.text == text[:text.index(stop) + len(stop)]
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


def test_stop_token_id_and_max_tokens(llm: LLM) -> None:
    (full,) = llm.generate(PROMPT, _greedy(max_tokens=10), use_tqdm=False)
    assert len(full.token_ids) == 10 and full.finish_reason == "length"
    stop_id = full.token_ids[4]
    (out,) = llm.generate(PROMPT, _greedy(stop_token_ids=[stop_id]), use_tqdm=False)
    assert out.token_ids == full.token_ids[:full.token_ids.index(stop_id) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id


def test_outputs_come_back_in_input_order(llm: LLM) -> None:
    prompts = ["a", "The weather today is sunny and", "b c", [5, 6, 7, 8]]
    params = [_greedy(max_tokens=n) for n in (6, 2, 9, 4)]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert [len(o.token_ids) for o in outputs] == [6, 2, 9, 4]
    assert [o.prompt for o in outputs] == prompts[:3] + [None]
    assert outputs[3].prompt_token_ids == [5, 6, 7, 8]
    assert all(o.lifetime.get("decode_end") is not None for o in outputs)


def test_too_long_prompt_is_rejected(llm: LLM) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([[5] * 10_000], _greedy(), use_tqdm=False)


def test_streamed_deltas_never_show_part_of_the_stop_string(llm: LLM) -> None:
    (full,) = llm.generate(PROMPT, _greedy(), use_tqdm=False)
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 4]
    engine = llm.engine
    engine.add_request("stream", PROMPT, _greedy(stop=[stop]))
    stop_index = full.text.index(stop)
    deltas, final = [], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            deltas.append(out.new_text)
            assert out.text == "".join(deltas)
            assert full.text.startswith(out.text)
            assert len(out.text) <= stop_index  # not even the stop string's first characters
            final = out
    assert final is not None and final.finished and final.text == full.text[:stop_index]
