"""Frozen tensor/pipeline parallel coordinates of one worker; layers read them at construction."""
from __future__ import annotations

from dataclasses import dataclass


def divide(numerator: int, denominator: int) -> int:
    """Exact integer division; raises when `denominator` does not divide `numerator`."""
    if numerator % denominator != 0:
        raise ValueError(f"{numerator} is not divisible by {denominator}")
    return numerator // denominator


@dataclass(frozen=True)
class ParallelInfo:
    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1

    def __post_init__(self) -> None:
        if self.tp_size < 1 or self.pp_size < 1:
            raise ValueError(f"tp_size and pp_size must be >= 1, got "
                             f"{self.tp_size}, {self.pp_size}")
        if not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(f"tp_rank {self.tp_rank} outside [0, {self.tp_size})")
        if not 0 <= self.pp_rank < self.pp_size:
            raise ValueError(f"pp_rank {self.pp_rank} outside [0, {self.pp_size})")

    @property
    def is_first_pp_rank(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_pp_rank(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def layer_range(self, num_layers: int) -> tuple[int, int]:
        """[start, end) of the decoder layers this pipeline stage owns; earlier stages take the
        remainder one layer each so the split is as even as possible."""
        return pp_layer_range(num_layers, self.pp_rank, self.pp_size)


def pp_layer_range(num_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    if num_layers < pp_size:
        raise ValueError(f"cannot split {num_layers} layers over {pp_size} pipeline stages")
    base, extra = divmod(num_layers, pp_size)
    start = pp_rank * base + min(pp_rank, extra)
    return start, start + base + (1 if pp_rank < extra else 0)
