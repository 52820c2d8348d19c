"""Sampler: greedy, top-k / top-p masks, seeded reproducibility regardless of batch composition."""
from __future__ import annotations

import torch

from distllm.layers.sampler import Sampler, SamplingMetadata, apply_top_k_top_p
from distllm.sampling_params import SamplingParams

VOCAB = 32


def _logits(num_rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_rows, VOCAB, generator=torch.Generator().manual_seed(seed))


def _sample(logits: torch.Tensor, params: list[SamplingParams],
            generators: list[torch.Generator | None] | None = None,
            sampler_seed: int = 0) -> list[int]:
    generators = generators or [None] * len(params)
    metadata = SamplingMetadata.from_params(params, generators, VOCAB)
    sampler = Sampler(torch.Generator().manual_seed(sampler_seed))
    return sampler(logits, metadata).tolist()


def test_greedy_is_argmax() -> None:
    logits = _logits(5)
    tokens = _sample(logits, [SamplingParams(temperature=0.0)] * 5)
    assert tokens == logits.argmax(dim=-1).tolist()


def test_greedy_rows_stay_greedy_in_a_mixed_batch() -> None:
    logits = _logits(4)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.5)] * 2
    tokens = _sample(logits, params)
    assert tokens[0] == int(logits[0].argmax()) and tokens[2] == int(logits[2].argmax())


def test_top_k_keeps_exactly_the_k_largest() -> None:
    logits = _logits(3)
    top_ks = torch.tensor([1, 5, VOCAB])
    masked = apply_top_k_top_p(logits, top_ks, torch.ones(3))
    for row, k in enumerate(top_ks.tolist()):
        kept = torch.isfinite(masked[row]).nonzero().flatten()
        assert set(kept.tolist()) == set(logits[row].topk(k).indices.tolist())
        assert torch.equal(masked[row, kept], logits[row, kept])


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]])
    masked = apply_top_k_top_p(probs.log(), torch.tensor([4, 4]), torch.tensor([0.7, 0.5]))
    assert torch.isfinite(masked[0]).tolist() == [True, True, False, False]
    assert torch.isfinite(masked[1]).tolist() == [True, False, False, False]


def test_sampling_never_leaves_the_top_k() -> None:
    logits = _logits(1).expand(200, VOCAB).contiguous()
    allowed = set(logits[0].topk(3).indices.tolist())
    tokens = _sample(logits, [SamplingParams(temperature=1.0, top_k=3)] * 200)
    assert set(tokens) <= allowed and len(set(tokens)) > 1


def test_top_k_one_equals_greedy() -> None:
    logits = _logits(6)
    tokens = _sample(logits, [SamplingParams(temperature=2.0, top_k=1)] * 6)
    assert tokens == logits.argmax(dim=-1).tolist()


def _seeded_run(batch_logits: list[torch.Tensor], row: int) -> list[int]:
    """Sample three steps; the seeded request sits at `row` of each batch."""
    generator = torch.Generator().manual_seed(1234)
    tokens = []
    for step, logits in enumerate(batch_logits):
        params = [SamplingParams(temperature=1.0)] * logits.shape[0]
        generators: list[torch.Generator | None] = [None] * logits.shape[0]
        generators[row] = generator
        tokens.append(_sample(logits, params, generators, sampler_seed=step + row)[row])
    return tokens


def test_seeded_request_is_reproducible_regardless_of_batch() -> None:
    own = [_logits(1, seed=s)[0] for s in range(3)]  # the seeded request's logits per step
    alone = _seeded_run([x.unsqueeze(0) for x in own], row=0)
    batched = []
    for step, x in enumerate(own):
        others = _logits(5, seed=100 + step)
        batched.append(torch.cat([others[:2], x.unsqueeze(0), others[2:]]))
    assert _seeded_run(batched, row=2) == alone


def test_different_seeds_differ() -> None:
    logits = _logits(1).expand(1, VOCAB)
    runs = {tuple(_sample(logits.repeat(64, 1), [SamplingParams(temperature=1.0)] * 64,
                          [torch.Generator().manual_seed(seed)] * 64)) for seed in (1, 2)}
    assert len(runs) == 2


def test_suppressed_tokens_are_never_sampled() -> None:
    logits = _logits(2)
    top = logits.argmax(dim=-1).tolist()
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_k=1)]
    metadata = SamplingMetadata.from_params(params, [None, None], VOCAB,
                                            suppressed_token_ids=[(top[0],), (top[1], 3)])
    tokens = Sampler(torch.Generator().manual_seed(0))(logits, metadata).tolist()
    assert tokens[0] != top[0] and tokens[1] not in (top[1], 3)
    assert tokens[0] == int(logits[0].topk(2).indices[1])
