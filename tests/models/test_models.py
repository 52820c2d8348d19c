"""distllm models vs transformers over a real paged KV cache: prefill, decode, ragged batches,
mixed prefill+decode batches and chunked prefill; logits to 1e-4 and greedy tokens exactly."""
from __future__ import annotations

import pytest
import torch

from tests.models.model_harness import CASES, PagedRunner, hf_logits, load_pair

ATOL = 1e-4
PROMPTS = [[3, 17, 250, 99, 41, 7, 300, 12, 5, 88, 64],
           [20, 21, 22, 23, 24],
           [400, 8, 150, 77, 12, 9, 501, 33, 2, 17, 450, 61, 6, 19, 200, 201, 202, 7]]


def _greedy_reference(hf: torch.nn.Module, prompt: list[int], steps: int) -> tuple[list, list]:
    ids, logits = list(prompt), []
    for _ in range(steps):
        last = hf_logits(hf, ids)[-1]
        logits.append(last)
        ids.append(int(last.argmax()))
    return ids[len(prompt):], logits


@pytest.mark.parametrize("case", list(CASES))
def test_prefill_then_decode_matches_transformers(tiny_dirs: dict, case: str) -> None:
    model, hf, cfg = load_pair(tiny_dirs[case])
    prompt, steps = PROMPTS[0], 6
    ref_tokens, ref_logits = _greedy_reference(hf, prompt, steps)
    runner = PagedRunner(model, cfg, block_size=4)
    logits = runner.step([(0, prompt)], [])
    torch.testing.assert_close(logits, hf_logits(hf, prompt), atol=ATOL, rtol=0)
    tokens = []
    for i in range(steps):
        last = logits[-1]
        torch.testing.assert_close(last, ref_logits[i], atol=ATOL, rtol=0)
        tokens.append(int(last.argmax()))
        logits = runner.step([], [(0, tokens[-1])])
    assert tokens == ref_tokens


@pytest.mark.parametrize("case", list(CASES))
def test_batched_prefill_and_mixed_decode(tiny_dirs: dict, case: str) -> None:
    model, hf, cfg = load_pair(tiny_dirs[case])
    runner = PagedRunner(model, cfg, block_size=8)
    refs = [_greedy_reference(hf, p, 4)[0] for p in PROMPTS]
    logits = runner.step([(0, PROMPTS[0]), (1, PROMPTS[1])], [])
    ends = torch.tensor([len(PROMPTS[0]), len(PROMPTS[0]) + len(PROMPTS[1])]) - 1
    torch.testing.assert_close(logits[: len(PROMPTS[0])], hf_logits(hf, PROMPTS[0]),
                               atol=ATOL, rtol=0)
    out = {0: [int(logits[ends[0]].argmax())], 1: [int(logits[ends[1]].argmax())]}
    # seq 2 prefills while seqs 0 and 1 decode, in one batch
    logits = runner.step([(2, PROMPTS[2])], [(0, out[0][-1]), (1, out[1][-1])])
    out[2] = [int(logits[len(PROMPTS[2]) - 1].argmax())]
    out[0].append(int(logits[-2].argmax()))
    out[1].append(int(logits[-1].argmax()))
    while min(len(v) for v in out.values()) < 4:
        seqs = [s for s in (0, 1, 2) if len(out[s]) < 4]
        logits = runner.step([], [(s, out[s][-1]) for s in seqs])
        for row, s in enumerate(seqs):
            out[s].append(int(logits[row].argmax()))
    assert [out[s] for s in (0, 1, 2)] == refs


@pytest.mark.parametrize("case", list(CASES))
def test_chunked_prefill_with_cached_prefix(tiny_dirs: dict, case: str) -> None:
    model, hf, cfg = load_pair(tiny_dirs[case])
    runner = PagedRunner(model, cfg, block_size=4)
    long, short = PROMPTS[2], PROMPTS[1]
    first = runner.step([(0, long[:7])], [])
    torch.testing.assert_close(first, hf_logits(hf, long)[:7], atol=ATOL, rtol=0)
    # second chunk (7 cached tokens, not block aligned) batched with a fresh prompt
    logits = runner.step([(0, long[7:]), (1, short)], [])
    torch.testing.assert_close(logits[: len(long) - 7], hf_logits(hf, long)[7:], atol=ATOL,
                               rtol=0)
    torch.testing.assert_close(logits[len(long) - 7:], hf_logits(hf, short), atol=ATOL, rtol=0)
    token = int(logits[len(long) - 8].argmax())
    decode = runner.step([], [(0, token)])
    torch.testing.assert_close(decode[0], hf_logits(hf, long + [token])[-1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_random_weights_give_varied_greedy_output(tiny_dirs: dict, case: str) -> None:
    model, _, cfg = load_pair(tiny_dirs[case])
    runner = PagedRunner(model, cfg, block_size=8)
    for seq, prompt in enumerate(PROMPTS):
        tokens = [int(runner.step([(seq, prompt)], [])[-1].argmax())]
        for _ in range(15):
            tokens.append(int(runner.step([], [(seq, tokens[-1])])[-1].argmax()))
        assert len(set(tokens)) >= 3, f"degenerate greedy output {tokens}"
