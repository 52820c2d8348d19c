"""Tensor-parallel collectives: identity without a registered TP group, else torch.distributed.

Layers call these only when their `ParallelInfo.tp_size > 1`; the worker registers the group
(`set_tp_group`) after `torch.distributed` is initialised, so building a model never needs it.
"""
from __future__ import annotations

from typing import Any

import torch

_TP_GROUP: Any = None  # torch.distributed ProcessGroup of this worker's TP peers, or None


def set_tp_group(group: Any) -> None:
    global _TP_GROUP
    _TP_GROUP = group


def get_tp_group() -> Any:
    return _TP_GROUP


def _tp_world_size() -> int:
    if _TP_GROUP is None:
        return 1
    import torch.distributed as dist

    return dist.get_world_size(group=_TP_GROUP)


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over the TP group (in place when distributed); identity when TP size is 1."""
    if _tp_world_size() == 1:
        return x
    import torch.distributed as dist

    dist.all_reduce(x, group=_TP_GROUP)
    return x


def tp_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate the TP ranks' `x` along `dim` (rank order); identity when TP size is 1."""
    world = _tp_world_size()
    if world == 1:
        return x
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=_TP_GROUP)
    return torch.cat(parts, dim=dim)
