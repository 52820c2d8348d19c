"""Request lifecycle timestamps, shared by the engine, simdist and the load generator (pure Python).

    arrival -> prefill_begin -> prefill_end -> [migration_begin -> migration_end]
            -> decode_begin -> decode_end

Colocated runs skip the migration pair. Times are monotonic seconds, recorded where they happen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class LifecycleEvent(StrEnum):
    ARRIVAL = "arrival"
    PREFILL_BEGIN = "prefill_begin"
    PREFILL_END = "prefill_end"
    MIGRATION_BEGIN = "migration_begin"
    MIGRATION_END = "migration_end"
    DECODE_BEGIN = "decode_begin"
    DECODE_END = "decode_end"


# Order in which a well-formed lifetime records its events.
EVENT_ORDER = list(LifecycleEvent)


@dataclass
class Lifetime:
    """Timestamps of one request. An event may be recorded more than once (e.g. a preempted
    request prefills again); `get` returns the latest, `first` the earliest."""

    events: list[tuple[LifecycleEvent, float]] = field(default_factory=list)

    def record(self, event: LifecycleEvent | str, time_s: float) -> None:
        self.events.append((LifecycleEvent(event), float(time_s)))

    def get(self, event: LifecycleEvent | str) -> float | None:
        event = LifecycleEvent(event)
        for name, t in reversed(self.events):
            if name is event:
                return t
        return None

    def first(self, event: LifecycleEvent | str) -> float | None:
        event = LifecycleEvent(event)
        for name, t in self.events:
            if name is event:
                return t
        return None

    def to_json(self) -> list[dict]:
        """The `lifecycle_events` list of the benchmark's `.exp` records."""
        return [{"event_type": name.value, "timestamp": t} for name, t in self.events]

    @classmethod
    def from_json(cls, items: list[dict]) -> Lifetime:
        return cls([(LifecycleEvent(d["event_type"]), float(d["timestamp"])) for d in items])
