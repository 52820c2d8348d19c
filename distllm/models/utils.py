"""Helpers shared by the model files: pipeline-stage layer lists and the common LM interface."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from distllm.distributed.parallel_info import ParallelInfo


class PPMissingLayer(nn.Module):
    """Placeholder for a decoder layer another pipeline stage owns (keeps layer indices)."""

    def forward(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("this layer belongs to another pipeline stage")


def cache_index(layer_idx: int, num_layers: int, parallel: ParallelInfo) -> int:
    """Index of global layer `layer_idx` in this pipeline stage's list of KV caches."""
    return layer_idx - parallel.layer_range(num_layers)[0]


def make_layers(num_layers: int, parallel: ParallelInfo,
                factory: Callable[[int], nn.Module]) -> tuple[int, int, nn.ModuleList]:
    """(start, end, layers): `factory(i)` builds layer i for i in this stage's [start, end)."""
    start, end = parallel.layer_range(num_layers)
    layers = [factory(i) if start <= i < end else PPMissingLayer() for i in range(num_layers)]
    return start, end, nn.ModuleList(layers)


class CausalLM(nn.Module):
    """Common interface of the model classes.

    forward(input_ids [n] int64, positions [n] int64, intermediate [n, hidden] | None)
        -> hidden [n, hidden]: final (normed) hidden states on the last pipeline stage,
        the residual stream handed to the next stage otherwise.
    compute_logits(hidden [n, hidden]) -> logits [n, vocab], fp32.
    Weight loading: `packed_modules_mapping` (checkpoint name part -> (param name part,
    shard_id)) and `remap_weight(name, tensor)` yielding (param name, tensor) pairs.
    """

    packed_modules_mapping: dict[str, tuple[str, str | int]] = {}
    lm_head: nn.Module | None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, h] -> [n, V] fp32
        if self.lm_head is None:
            raise RuntimeError("compute_logits runs on the last pipeline stage only")
        return self.lm_head(hidden)

    def remap_weight(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        yield name, tensor
