"""Per-request sampling and stopping options; invalid values raise `SamplingParamsError` naming the
field (the API server turns it into HTTP 400). Pure Python."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class SamplingParamsError(ValueError):
    """An invalid sampling option; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops.

    temperature == 0 is greedy. top_k <= 0 and top_p == 1 disable those filters. A request stops at
    EOS (unless `ignore_eos`), at any of `stop_token_ids`, after `max_tokens` output tokens, at the
    engine's max model length, or when its text contains one of `stop` (the stop string is trimmed
    from the text unless `include_stop_str_in_output`). `seed` makes sampling reproducible
    regardless of which other requests share the batch.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_tokens: int = 0  # EOS and stop token ids are ignored before this many output tokens
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        # NOTE: normalise list/str inputs into tuples so the params stay hashable and immutable.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        self._validate_lengths()
        self._validate_sampling()
        self._validate_stops()

    def _validate_lengths(self) -> None:
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise SamplingParamsError(
                "max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise SamplingParamsError(
                "min_tokens", f"must be an integer >= 0, got {self.min_tokens!r}")
        if self.min_tokens > self.max_tokens:
            raise SamplingParamsError(
                "min_tokens", f"must be <= max_tokens={self.max_tokens}, got {self.min_tokens}")

    def _validate_sampling(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            raise SamplingParamsError("temperature", f"must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise SamplingParamsError("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k):
            raise SamplingParamsError("top_k", f"must be an integer, got {self.top_k!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise SamplingParamsError("seed", f"must be an integer or None, got {self.seed!r}")
        if self.seed is not None and not -2**63 <= self.seed < 2**64:
            raise SamplingParamsError("seed", f"must fit in 64 bits, got {self.seed}")

    def _validate_stops(self) -> None:
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise SamplingParamsError("stop", "must be non-empty strings")
        if any(not _is_int(t) or t < 0 for t in self.stop_token_ids):
            raise SamplingParamsError("stop_token_ids", "must be non-negative integers")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @classmethod
    def from_request(cls, body: dict) -> SamplingParams:
        """Build from a JSON request body, ignoring keys that are not sampling options."""
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in body.items() if k in known}
        for key in ("stop", "stop_token_ids"):
            if isinstance(kwargs.get(key), Sequence) and not isinstance(kwargs[key], str):
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)
