"""The two dataclasses that cross the control/data-plane boundary: `SchedulerOutput` goes down to
the worker, `ModelRunnerOutput` comes back up. Plain Python values only, so both pickle cheaply
(the worker may live in another process)."""
from __future__ import annotations

from dataclasses import dataclass, field

from distllm.sampling_params import SamplingParams

# A decode's token id that stands for the token the worker sampled for this request in its
# previous step (async scheduling: the step was scheduled before that token came back).
LAST_SAMPLED = -1


@dataclass
class ScheduledRequest:
    """One request's share of a step: compute `token_ids` at positions
    [num_computed_tokens, num_computed_tokens + len(token_ids)), then sample one token unless
    this is a prefill chunk that stops short of the request's last token. A decode scheduled one
    step ahead has `token_ids == [LAST_SAMPLED]`."""

    request_id: str
    token_ids: list[int]  # the new tokens whose K/V this step computes and caches
    num_computed_tokens: int  # tokens already in the cache (the position of token_ids[0])
    block_table: list[int]  # logical block index -> device block id; covers every position
    sampling_params: SamplingParams
    suppressed_token_ids: tuple[int, ...] = ()  # never sampled this step (EOS before min_tokens)
    sample: bool = True  # False for a prefill chunk that does not reach the last token

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class SchedulerOutput:
    """Everything the worker needs for one forward. Prefills come first in the batch.

    NOTE: the worker moves blocks in this order: swap in, swap out, copy, then the forward. The
    scheduler relies on it: a CPU block freed by a swap-in may be reused by a swap-out, and a
    device block freed by a swap-out may be reused by a copy or by new tokens of the same step.
    """

    prefills: list[ScheduledRequest] = field(default_factory=list)
    decodes: list[ScheduledRequest] = field(default_factory=list)  # one token each
    blocks_to_copy: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) device
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)  # (device, cpu)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)  # (cpu, device)
    finished_request_ids: list[str] = field(default_factory=list)  # the worker drops their state

    @property
    def scheduled(self) -> list[ScheduledRequest]:
        return self.prefills + self.decodes

    @property
    def num_batched_tokens(self) -> int:
        return sum(r.num_tokens for r in self.prefills) + len(self.decodes)

    @property
    def has_forward(self) -> bool:
        return bool(self.prefills or self.decodes)


@dataclass
class ModelRunnerOutput:
    """What one forward produced."""

    # request id -> new token, for every scheduled request with `sample` set
    sampled_token_ids: dict[str, int] = field(default_factory=dict)
