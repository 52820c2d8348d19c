"""Batched next-token sampling: greedy, temperature, top-k, top-p, with per-request generators.

A request with a seed draws its noise from its own `torch.Generator`, one draw of `vocab_size`
values per sampled token, so its tokens do not depend on which other requests share the batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from distllm.sampling_params import SamplingParams


@dataclass
class SamplingMetadata:
    """Per-row sampling options of one batch (row i = the i-th sampled request)."""

    temperatures: torch.Tensor  # [num_rows], fp32; 0 = greedy
    top_ks: torch.Tensor  # [num_rows], int64; vocab_size = disabled
    top_ps: torch.Tensor  # [num_rows], fp32; 1 = disabled
    generators: list[torch.Generator | None]  # per row; None = the sampler's shared generator
    all_greedy: bool
    needs_top_k_top_p: bool
    suppressed_token_ids: list[tuple[int, ...]] | None = None  # per row; None = nothing banned

    @classmethod
    def from_params(cls, params: Sequence[SamplingParams], generators: list[torch.Generator | None],
                    vocab_size: int, device: torch.device | str = "cpu",
                    suppressed_token_ids: list[tuple[int, ...]] | None = None) -> SamplingMetadata:
        temperatures = [0.0 if p.is_greedy else float(p.temperature) for p in params]
        top_ks = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
        top_ps = [float(p.top_p) for p in params]
        return cls(
            temperatures=torch.tensor(temperatures, dtype=torch.float32, device=device),
            top_ks=torch.tensor(top_ks, dtype=torch.int64, device=device),
            top_ps=torch.tensor(top_ps, dtype=torch.float32, device=device),
            generators=generators,
            all_greedy=all(t == 0.0 for t in temperatures),
            needs_top_k_top_p=any(k < vocab_size for k in top_ks) or any(p < 1 for p in top_ps),
            suppressed_token_ids=suppressed_token_ids if any(suppressed_token_ids or ()) else None,
        )


def apply_top_k_top_p(
    logits: torch.Tensor,  # [num_rows, vocab_size], fp32
    top_ks: torch.Tensor,  # [num_rows], int64
    top_ps: torch.Tensor,  # [num_rows], fp32
) -> torch.Tensor:  # [num_rows, vocab_size]; filtered-out entries are -inf
    """Keep each row's `top_k` largest logits, then the smallest set whose probability reaches
    `top_p` (the most likely token is always kept)."""
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    vocab_size = logits.shape[-1]
    kth = sorted_logits.gather(1, (vocab_size - top_ks).clamp(min=0).unsqueeze(1))
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    cum_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum_probs <= (1.0 - top_ps).unsqueeze(1)
    drop[:, -1] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


class Sampler:
    """Samples one token per row of logits.

    Args:
        generator: draws for rows without their own generator (seeded by the engine; no
            global RNG).
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def __call__(
        self,
        logits: torch.Tensor,  # [num_rows, vocab_size], fp32
        metadata: SamplingMetadata,
    ) -> torch.Tensor:  # [num_rows], int64
        if metadata.suppressed_token_ids is not None:
            logits = logits.clone()
            for row, token_ids in enumerate(metadata.suppressed_token_ids):
                logits[row, list(token_ids)] = float("-inf")
        greedy = logits.argmax(dim=-1)
        if metadata.all_greedy:
            return greedy
        temps = metadata.temperatures
        scaled = logits / torch.where(temps > 0, temps, 1.0).unsqueeze(1)
        if metadata.needs_top_k_top_p:
            scaled = apply_top_k_top_p(scaled, metadata.top_ks, metadata.top_ps)
        probs = scaled.softmax(dim=-1)
        noise = self._exponential_noise(probs, metadata.generators)
        # NOTE: argmax(p / E) with E ~ Exp(1) is a sample from p (the exponential race).
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(temps > 0, sampled, greedy)

    def _exponential_noise(
        self,
        probs: torch.Tensor,  # [num_rows, vocab_size]
        generators: list[torch.Generator | None],
    ) -> torch.Tensor:  # [num_rows, vocab_size], Exp(1) draws
        noise = torch.empty_like(probs)
        shared = [i for i, g in enumerate(generators) if g is None]
        if shared:
            rows = torch.empty(len(shared), probs.shape[1], device=probs.device)
            noise[shared] = rows.exponential_(generator=self.generator)
        for i, g in enumerate(generators):
            if g is not None:
                noise[i].exponential_(generator=g)
        return noise
