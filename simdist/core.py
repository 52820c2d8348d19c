"""Discrete-event core: one heap of events ordered by (time, priority, seq), no simpy.

An event is the tuple (time_s, kind, seq, handler, arg); popping it calls handler(arg). `kind` is
an `EventKind` whose value is the tie-break priority at equal times, `seq` a global insertion
counter, so runs are exactly reproducible. Handlers schedule follow-up events themselves (no
per-event objects: the hot loop allocates one tuple per event).
"""
from __future__ import annotations

import heapq
from collections.abc import Callable
from enum import IntEnum
from typing import Any


class EventKind(IntEnum):
    """Tie-break order at equal timestamps (lower first), then FIFO by insertion:

    STEP_END      an iteration finishes: tokens are emitted and memory freed before anything
                  else happens at that instant, so admissions at the same time see the room;
    TRANSFER_END  a KV migration lands on its decode instance;
    STAGE_FREE    a prefill pipeline's first stage frees (next batch may start);
    ARRIVAL       a new request reaches the router (after completions, so it never jumps a
                  same-time completion's freed capacity);
    WAKEUP        an idle instance re-runs its scheduler.
    """

    STEP_END = 0
    TRANSFER_END = 1
    STAGE_FREE = 2
    ARRIVAL = 3
    WAKEUP = 4


class Simulator:
    """The event heap and the clock. `trace`, when a list, receives (time, kind, handler, id)
    per event for golden-trace tests (slower path; off by default)."""

    __slots__ = ("now", "_heap", "_seq", "trace", "num_events")

    def __init__(self, trace: list | None = None) -> None:
        self.now = 0.0
        self._heap: list[tuple] = []
        self._seq = 0
        self.trace = trace
        self.num_events = 0

    def schedule(self, time_s: float, kind: int, handler: Callable[[Any], None],
                 arg: Any = None) -> None:
        """Queue handler(arg) at time_s (never in the past)."""
        heapq.heappush(self._heap, (time_s, kind, self._seq, handler, arg))
        self._seq += 1

    def run(self) -> float:
        """Process events until the heap is empty; returns the final clock."""
        heap, pop = self._heap, heapq.heappop
        n = 0
        if self.trace is None:
            while heap:
                t, _, _, fn, arg = pop(heap)
                self.now = t
                fn(arg)
                n += 1
        else:
            while heap:
                t, kind, _, fn, arg = pop(heap)
                self.now = t
                self.trace.append((t, EventKind(kind).name, fn.__qualname__, _ident(arg)))
                fn(arg)
                n += 1
        self.num_events += n
        return self.now


def _ident(arg: Any) -> Any:
    rid = getattr(arg, "rid", None)
    if rid is not None:
        return rid
    return getattr(arg, "name", None)
