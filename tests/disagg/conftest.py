"""A tiny GQA model (4 heads, 2 KV heads, 4 layers) and its reference greedy outputs (transformers
and the in-process colocated engine); the session Ray cluster is in tests/conftest.py."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

PROMPT_LENS = [5, 17, 40, 9, 28, 12]
MAX_TOKENS = [8, 24, 12, 20, 8, 16]
ENGINE_KWARGS = dict(block_size=8, num_kv_blocks=64, max_num_seqs=8, max_model_len=256,
                     max_num_batched_tokens=1024)


@pytest.fixture(scope="session")
def tiny_gqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distllm.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("gqa"), arch="llama3", seed=0,
                           num_hidden_layers=4)


@pytest.fixture(scope="session")
def prompts() -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(4, 512) for _ in range(n)] for n in PROMPT_LENS]


@pytest.fixture(scope="session")
def reference(tiny_gqa: Path, prompts: list[list[int]]) -> list[list[int]]:
    """Greedy outputs of transformers, checked equal to the in-process colocated engine."""
    from transformers import AutoModelForCausalLM

    from distllm import LLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gqa, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.generation_config.eos_token_id = None
    expected = []
    for prompt, max_tokens in zip(prompts, MAX_TOKENS, strict=True):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_tokens, pad_token_id=0)
        expected.append(out[0, len(prompt):].tolist())
    local = LLM(str(tiny_gqa), **ENGINE_KWARGS).generate(prompts, greedy_params(), use_tqdm=False)
    assert [o.token_ids for o in local] == expected
    return expected


def greedy_params() -> list:
    from distllm.sampling_params import SamplingParams

    return [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in MAX_TOKENS]
