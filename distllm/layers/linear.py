"""TP-aware linear layers; every parameter carries a `weight_loader` that takes the full
checkpoint tensor and copies this rank's shard (column = split outputs, row = split inputs)."""
from __future__ import annotations

import torch
from torch import nn

from distllm.distributed.collectives import tp_all_gather, tp_all_reduce
from distllm.distributed.parallel_info import ParallelInfo, divide
from distllm.ops.linear import linear


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)} vs "
                         f"checkpoint {tuple(loaded.shape)}")
    param.data.copy_(loaded)


def _param(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


class LinearBase(nn.Module):
    """y = x @ W^T + b with W stored [out_features_per_rank, in_features_per_rank]."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                 device: torch.device | str, parallel: ParallelInfo | None) -> None:
        super().__init__()
        self.parallel = parallel or ParallelInfo()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _param((out_features, in_features), dtype, device)
        self.weight.weight_loader = self.weight_loader
        self.bias = _param((out_features,), dtype, device) if bias else None
        if self.bias is not None:
            self.bias.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        default_weight_loader(param, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, in] -> [n, out]
        return linear(x, self.weight, self.bias)


class ReplicatedLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype,
                 device: torch.device | str, parallel: ParallelInfo | None = None) -> None:
        super().__init__(in_features, out_features, bias, dtype, device, parallel)


class ColumnParallelLinear(LinearBase):
    """Output features split over TP ranks; `gather_output` concatenates them back."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype,
                 device: torch.device | str, parallel: ParallelInfo | None = None,
                 gather_output: bool = False) -> None:
        tp = (parallel or ParallelInfo()).tp_size
        super().__init__(in_features, divide(out_features, tp), bias, dtype, device, parallel)
        self.gather_output = gather_output

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        size = param.shape[0]
        default_weight_loader(param, loaded.narrow(0, self.parallel.tp_rank * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, self.bias)
        if self.gather_output and self.parallel.tp_size > 1:
            y = tp_all_gather(y, dim=-1)
        return y


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs stored side by side (e.g. gate_up_proj); shard_id is the
    index of the checkpoint matrix in `output_sizes`."""

    def __init__(self, in_features: int, output_sizes: list[int], *, bias: bool,
                 dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo | None = None) -> None:
        self.output_sizes = output_sizes
        super().__init__(in_features, sum(output_sizes), bias=bias, dtype=dtype, device=device,
                         parallel=parallel)
        self.weight.shard_ids = list(range(len(output_sizes)))
        if self.bias is not None:
            self.bias.shard_ids = list(range(len(output_sizes)))

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard_id: int | None = None) -> None:
        if shard_id is None:
            raise ValueError("MergedColumnParallelLinear needs a shard_id")
        tp, rank = self.parallel.tp_size, self.parallel.tp_rank
        size = self.output_sizes[shard_id] // tp
        offset = sum(self.output_sizes[:shard_id]) // tp
        default_weight_loader(param.data.narrow(0, offset, size),
                              loaded.narrow(0, rank * size, size))


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q/k/v projection with GQA: query heads split over TP ranks, KV heads split too or
    replicated when there are fewer KV heads than ranks. shard_id is "q", "k" or "v"."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, *,
                 bias: bool, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo | None = None) -> None:
        tp = (parallel or ParallelInfo()).tp_size
        self.head_dim = head_dim
        self.num_heads = divide(num_heads, tp)  # per rank
        if num_kv_heads >= tp:
            self.num_kv_heads, self.kv_replicas = divide(num_kv_heads, tp), 1
        else:
            self.num_kv_heads, self.kv_replicas = 1, divide(tp, num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        super().__init__(hidden_size, out, bias=bias, dtype=dtype, device=device,
                         parallel=parallel)
        for p in (self.weight, self.bias):
            if p is not None:
                p.shard_ids = ["q", "k", "v"]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard_id: str | None = None) -> None:
        rank = self.parallel.tp_rank
        if shard_id == "q":
            offset, size, index = 0, self.q_size, rank
        elif shard_id in ("k", "v"):
            offset = self.q_size + (0 if shard_id == "k" else self.kv_size)
            size, index = self.kv_size, rank // self.kv_replicas
        else:
            raise ValueError(f"QKVParallelLinear shard_id must be q/k/v, got {shard_id!r}")
        default_weight_loader(param.data.narrow(0, offset, size),
                              loaded.narrow(0, index * size, size))


class RowParallelLinear(LinearBase):
    """Input features split over TP ranks; partial outputs are summed with an all-reduce.
    The bias is added once, after the reduction."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype,
                 device: torch.device | str, parallel: ParallelInfo | None = None) -> None:
        tp = (parallel or ParallelInfo()).tp_size
        super().__init__(divide(in_features, tp), out_features, bias, dtype, device, parallel)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if param.dim() == 1:  # bias is replicated
            default_weight_loader(param, loaded)
            return
        size = param.shape[1]
        default_weight_loader(param, loaded.narrow(1, self.parallel.tp_rank * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, in / tp] -> [n, out]
        y = linear(x, self.weight)
        if self.parallel.tp_size > 1:
            y = tp_all_reduce(y)
        return y if self.bias is None else y + self.bias
