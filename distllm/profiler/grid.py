"""The profiling grid (`ProfileGridConfig`) and the hand-made `SchedulerOutput`s it times: prefill
steps (batch x prompt lengths) and decode steps (batch x context lengths), exactly the batches the
prefill / decode schedulers hand the workers, with every request in its own KV blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from distllm.core.scheduler_output import ScheduledRequest, SchedulerOutput
from distllm.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)


def _ints(name: str, values: tuple[int, ...]) -> None:
    if not values or any(not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {values!r}")


@dataclass(frozen=True)
class ProfileGridConfig:
    """Which steps to time and how often. A prefill point is (batch, prompt_len) with every
    prompt of the batch that long; a decode point is (batch, context_len)."""

    prefill_batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    prompt_lens: tuple[int, ...] = (16, 64, 128, 256, 512)
    decode_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    context_lens: tuple[int, ...] = (64, 256, 512, 1024)
    max_prefill_tokens: int = 2048  # a prefill batch never exceeds the scheduler's budget
    max_decode_tokens: int = 65536  # KV tokens one decode step may hold (cache size)
    repeats: int = 5  # timings per point; the median is kept
    warmup: int = 2  # untimed runs before each point
    block_size: int = 16

    def __post_init__(self) -> None:
        for name in ("prefill_batch_sizes", "prompt_lens", "decode_batch_sizes", "context_lens"):
            _ints(name, getattr(self, name))
        for name in ("max_prefill_tokens", "max_decode_tokens", "repeats", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if len(self.prefill_points()) < 3 or len(self.decode_points()) < 3:
            raise ValueError("the grid needs >= 3 prefill and >= 3 decode points within the "
                             "token budgets (raise max_prefill_tokens / max_decode_tokens)")

    def prefill_points(self) -> list[tuple[int, int]]:
        """(batch, prompt_len) within the prefill token budget."""
        return [(b, n) for b in self.prefill_batch_sizes for n in self.prompt_lens
                if b * n <= self.max_prefill_tokens]

    def decode_points(self) -> list[tuple[int, int]]:
        """(batch, context_len) within the cache."""
        return [(b, c) for b in self.decode_batch_sizes for c in self.context_lens
                if b * self.blocks_for(c) * self.block_size <= self.max_decode_tokens]

    def blocks_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    @property
    def num_blocks_needed(self) -> int:
        """KV blocks the largest grid point touches."""
        prefill = max(b * self.blocks_for(n) for b, n in self.prefill_points())
        decode = max(b * self.blocks_for(c) for b, c in self.decode_points())
        return max(prefill, decode)

    @property
    def num_steps(self) -> int:
        points = len(self.prefill_points()) + len(self.decode_points())
        return points * (self.repeats + self.warmup)


def _request(i: int, tokens: list[int], num_computed: int, first_block: int,
             num_blocks: int) -> ScheduledRequest:
    table = list(range(first_block, first_block + num_blocks))
    return ScheduledRequest(f"profile-{i}", tokens, num_computed, table, GREEDY)


def prefill_step(batch: int, prompt_len: int, grid: ProfileGridConfig,
                 vocab_size: int) -> SchedulerOutput:
    """`batch` fresh prompts of `prompt_len` tokens, each in its own blocks."""
    per = grid.blocks_for(prompt_len)
    reqs = [_request(i, [(7 * i + j) % vocab_size for j in range(prompt_len)], 0, i * per, per)
            for i in range(batch)]
    return SchedulerOutput(prefills=reqs)


def decode_step(batch: int, context_len: int, grid: ProfileGridConfig,
                vocab_size: int) -> SchedulerOutput:
    """`batch` requests generating their token at position context_len - 1 (context_len KV
    tokens each after the step, as the decode scheduler counts them)."""
    per = grid.blocks_for(context_len)
    reqs = [_request(i, [(3 * i + 1) % vocab_size], context_len - 1, i * per, per)
            for i in range(batch)]
    return SchedulerOutput(decodes=reqs)
