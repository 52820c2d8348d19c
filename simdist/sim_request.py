"""Per-request state of a simulated run (hot path: __slots__, no per-token work).

Tokens are not stored one by one: a request keeps its first-token time and the segments of the
decode iterations it took part in; token times are rebuilt from the instance's step-time list
only when records are written.
"""
from __future__ import annotations

from distllm.request import LifecycleEvent, Lifetime


class SimRequest:
    __slots__ = ("rid", "arrival", "prompt_len", "output_len", "remaining", "ctx",
                 "pending_prefill", "log", "first_token", "last_token", "segments", "batch",
                 "join_step", "finish_step", "prefill_inst", "error")

    def __init__(self, rid: int, arrival: float, prompt_len: int, output_len: int) -> None:
        self.rid = rid
        self.arrival = arrival
        self.prompt_len = prompt_len
        self.output_len = output_len
        self.remaining = output_len - 1  # decode iterations still to run (prefill makes token 1)
        self.ctx = prompt_len  # KV tokens once prefilled
        self.pending_prefill = prompt_len  # tokens still to (re)compute before decoding
        self.log: list[tuple[LifecycleEvent, float]] = [(LifecycleEvent.ARRIVAL, arrival)]
        self.first_token = -1.0
        self.last_token = -1.0
        self.segments: list[tuple[list[float], int, int]] = []  # (step_times, first, end)
        self.batch = None  # DecodeBatch currently holding it
        self.join_step = 0
        self.finish_step = 0
        self.prefill_inst = None  # instance holding its KV until migrated
        self.error: str | None = None

    @property
    def is_done(self) -> bool:
        return self.error is not None or (self.first_token >= 0 and self.remaining == 0
                                          and self.batch is None and self.last_token >= 0)

    def token_timestamps(self) -> list[float]:
        if self.first_token < 0:
            return []
        out = [self.first_token]
        for times, first, end in self.segments:
            out.extend(times[first:end])
        return out

    def lifetime(self) -> Lifetime:
        return Lifetime(list(self.log))
