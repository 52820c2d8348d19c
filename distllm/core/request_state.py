"""Scheduler-side state of one request: token ids, progress, KV blocks and status.

    WAITING --schedule prefill--> RUNNING --stop condition / abort--> FINISHED_*
       ^                             |  |
       |                             |  +--swap out--> SWAPPED --swap in--> RUNNING
       +--- PREEMPTED (recompute) <--+
            (blocks freed, num_computed_tokens = 0, back at the head of the waiting queue)

WAITING/PREEMPTED requests hold no blocks; RUNNING ones hold device blocks; SWAPPED ones hold
CPU blocks. A FINISHED_* request holds nothing.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from distllm.request import LifecycleEvent, Lifetime
from distllm.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    SWAPPED = "swapped"
    FINISHED_STOPPED = "stop"  # EOS, a stop token id or a stop string
    FINISHED_LENGTH = "length"  # max_tokens or max model length
    FINISHED_ABORTED = "abort"
    FINISHED_IGNORED = "ignored"  # can never fit (too long for the cache)

    @property
    def is_finished(self) -> bool:
        return self.name.startswith("FINISHED")

    @property
    def finish_reason(self) -> str | None:
        return self.value if self.is_finished else None


@dataclass(eq=False)  # NOTE: identity semantics; queues remove requests by identity
class Request:
    """One request as the scheduler tracks it. Token ids = prompt + output so far."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V sit in the cache
    block_table: list[int] = field(default_factory=list)  # logical block index -> block id
    num_preemptions: int = 0
    is_prefilling: bool = False  # admitted (or re-admitted) and no token sampled since
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    error: str | None = None
    lifetime: Lifetime = field(default_factory=Lifetime)
    token_times: list[float] = field(default_factory=list)  # monotonic time of each output token

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError(f"request {self.request_id}: the prompt has no tokens")
        if not self.lifetime.events:
            self.lifetime.record(LifecycleEvent.ARRIVAL, self.arrival_time)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_output_token(self, token_id: int, time_s: float) -> None:
        self.output_token_ids.append(token_id)
        self.token_times.append(time_s)
