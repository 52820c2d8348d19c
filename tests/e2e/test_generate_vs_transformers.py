"""Greedy `LLM.generate` equals transformers' `generate` token for token, under continuous
batching (requests join and finish mid-run) and under preemption; no block leaks after a run."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from distllm import LLM, SamplingParams
from distllm.engine.outputs import RequestOutput

PRESETS = ["llama", "llama3", "opt", "opt-350m", "gpt2"]
PROMPT_LENS = [5, 17, 40, 9, 28, 12]
MAX_TOKENS = [8, 24, 12, 20, 8, 16]


def _prompts(vocab_size: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(4, vocab_size) for _ in range(n)] for n in PROMPT_LENS]


def _transformers_greedy(model_dir: Path, prompts: list[list[int]]) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.generation_config.eos_token_id = None  # never stop early: the engine ignores EOS too
    outputs = []
    for prompt, max_tokens in zip(prompts, MAX_TOKENS, strict=True):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_tokens, pad_token_id=0)
        outputs.append(out[0, len(prompt):].tolist())
    return outputs


@pytest.fixture(scope="module")
def reference(tiny_model_dir):  # noqa: ANN001, ANN201
    cache: dict[str, tuple[Path, list[list[int]], list[list[int]]]] = {}

    def get(preset: str) -> tuple[Path, list[list[int]], list[list[int]]]:
        if preset not in cache:
            model_dir = tiny_model_dir(preset)
            prompts = _prompts(512)
            cache[preset] = (model_dir, prompts, _transformers_greedy(model_dir, prompts))
        return cache[preset]

    return get


def _generate(model_dir: Path, prompts: list[list[int]],
              **engine_kwargs: object) -> tuple[list[RequestOutput], int]:
    """Outputs in input order, and how many blocks were swapped out on the way."""
    llm = LLM(model=str(model_dir), **engine_kwargs)
    swapped_out: list[tuple[int, int]] = []
    cache = llm.engine.worker.cache_engine
    swap_out = cache.swap_out
    cache.swap_out = lambda pairs: (swapped_out.extend(pairs), swap_out(pairs))[1]
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in MAX_TOKENS]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    block_manager = llm.engine.block_manager
    assert block_manager.num_free_blocks == block_manager.num_blocks, "KV blocks leaked"
    assert not llm.engine.has_unfinished_requests()
    assert block_manager.num_free_swap_blocks == block_manager.swap.num_blocks
    return outputs, len(swapped_out)


@pytest.mark.parametrize("preset", PRESETS)
def test_continuous_batching_matches_transformers(preset: str, reference) -> None:  # noqa: ANN001
    model_dir, prompts, expected = reference(preset)
    # 6 requests, at most 3 at a time: requests join and finish mid-run.
    outputs, _ = _generate(model_dir, prompts, max_num_seqs=3, block_size=8, num_kv_blocks=128)
    assert [o.prompt_token_ids for o in outputs] == prompts
    for out, want in zip(outputs, expected, strict=True):
        assert out.token_ids == want
        assert out.finish_reason == "length"
    assert all(o.num_preemptions == 0 for o in outputs)


@pytest.mark.parametrize("preset", PRESETS)
def test_preemption_keeps_outputs_identical(preset: str, reference) -> None:  # noqa: ANN001
    model_dir, prompts, expected = reference(preset)
    # 20 blocks of 4 tokens: the longest request (40 + 12 tokens) fits alone, not all together.
    outputs, _ = _generate(model_dir, prompts, max_num_seqs=6, block_size=4, num_kv_blocks=20,
                           watermark=0.0)
    assert sum(o.num_preemptions for o in outputs) > 0, "the cache was meant to force preemption"
    assert [o.token_ids for o in outputs] == expected


@pytest.mark.parametrize("preset", PRESETS)
def test_chunked_prefill_matches_transformers(preset: str, reference) -> None:  # noqa: ANN001
    model_dir, prompts, expected = reference(preset)
    # A 16-token budget splits the longer prompts and mixes them with decodes.
    outputs, _ = _generate(model_dir, prompts, max_num_seqs=4, block_size=4, num_kv_blocks=128,
                           enable_chunked_prefill=True, max_num_batched_tokens=16)
    assert [o.token_ids for o in outputs] == expected


@pytest.mark.parametrize("preset", PRESETS)
def test_swap_preemption_keeps_outputs_identical(preset: str, reference) -> None:  # noqa: ANN001
    model_dir, prompts, expected = reference(preset)
    outputs, num_swapped = _generate(model_dir, prompts, max_num_seqs=6, block_size=4,
                                     num_kv_blocks=20, watermark=0.0, preemption_mode="swap",
                                     swap_space_gb=0.01)
    assert num_swapped > 0, "the cache was meant to force swapping"
    assert [o.token_ids for o in outputs] == expected
