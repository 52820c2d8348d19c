"""Vocab-parallel token embedding and LM head: each TP rank holds a contiguous slice of the
(padded) vocabulary rows."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distllm.distributed.collectives import tp_all_gather, tp_all_reduce
from distllm.distributed.parallel_info import ParallelInfo
from distllm.ops.linear import linear


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, *, dtype: torch.dtype,
                 device: torch.device | str, parallel: ParallelInfo | None = None) -> None:
        super().__init__()
        self.parallel = parallel or ParallelInfo()
        tp = self.parallel.tp_size
        self.num_embeddings = num_embeddings
        self.rows_per_rank = (num_embeddings + tp - 1) // tp
        self.vocab_start = self.parallel.tp_rank * self.rows_per_rank
        self.weight = nn.Parameter(
            torch.empty(self.rows_per_rank, embedding_dim, dtype=dtype, device=device),
            requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if loaded.shape[0] != self.num_embeddings or loaded.shape[1] != param.shape[1]:
            raise ValueError(f"embedding shape mismatch: expected "
                             f"({self.num_embeddings}, {param.shape[1]}), "
                             f"got {tuple(loaded.shape)}")
        rows = min(self.rows_per_rank, self.num_embeddings - self.vocab_start)
        param.data.zero_()
        param.data[:rows].copy_(loaded.narrow(0, self.vocab_start, rows))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [n] -> [n, dim]
        if self.parallel.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        mask = (local < 0) | (local >= self.rows_per_rank)
        out = F.embedding(local.masked_fill(mask, 0), self.weight)
        out.masked_fill_(mask.unsqueeze(-1), 0)
        return tp_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Logits over the vocab slice of this rank, gathered to the full vocab in fp32."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, dtype: torch.dtype,
                 device: torch.device | str, parallel: ParallelInfo | None = None,
                 bias: bool = False) -> None:
        super().__init__(num_embeddings, embedding_dim, dtype=dtype, device=device,
                         parallel=parallel)
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.rows_per_rank, dtype=dtype, device=device),
                                     requires_grad=False)
            self.bias.weight_loader = self.weight_loader_bias

    def weight_loader_bias(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        rows = min(self.rows_per_rank, self.num_embeddings - self.vocab_start)
        param.data.zero_()
        param.data[:rows].copy_(loaded.narrow(0, self.vocab_start, rows))

    def tie_to(self, embedding: VocabParallelEmbedding) -> None:
        """Share the embedding matrix (tie_word_embeddings)."""
        self.weight = embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, dim] -> [n, vocab], fp32
        logits = linear(hidden, self.weight, self.bias)
        if self.parallel.tp_size > 1:
            logits = tp_all_gather(logits, dim=-1)
        return logits[:, : self.num_embeddings].float()


class PositionEmbedding(nn.Module):
    """Learned absolute positions, replicated on every rank; row = position + offset
    (OPT reserves the first 2 rows)."""

    def __init__(self, num_positions: int, embedding_dim: int, *, dtype: torch.dtype,
                 device: torch.device | str, offset: int = 0) -> None:
        super().__init__()
        self.offset = offset
        self.weight = nn.Parameter(
            torch.empty(num_positions + offset, embedding_dim, dtype=dtype, device=device),
            requires_grad=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # [n] -> [n, dim]
        return F.embedding(positions + self.offset, self.weight)
