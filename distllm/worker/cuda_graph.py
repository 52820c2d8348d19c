"""CUDA graphs for decode steps: one graph per padded batch-size bucket, captured once after the
KV cache exists; pure-decode batches up to the largest bucket replay the graph of the smallest
bucket that holds them, everything else (prefills, mixed batches, CPU) runs eagerly.

Padding rows are harmless: token 0 at position 0, slot -1 (not cached), block table row of
block 0 and context length 1 (reads one cached token, output discarded).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from distllm.layers.context import AttentionMetadata, forward_batch, get_context

logger = logging.getLogger(__name__)

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]


def can_capture(dtype: torch.dtype, head_dim: int, block_size: int, has_cuda_kernels: bool
                ) -> bool:
    """Whether decode steps are capturable: only the native CUDA kernels (fp16/bf16, the head
    sizes and block sizes they support) avoid host syncs; the torch references do not."""
    return (has_cuda_kernels and dtype in (torch.float16, torch.bfloat16)
            and head_dim in (64, 128, 256) and block_size in (8, 16, 32))


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Buckets 1, 2, 4, then multiples of 8, up to (and including) `max_num_seqs`."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs]
    sizes += list(range(8, max_num_seqs, 8))
    return sorted(set(sizes + [max_num_seqs]))


def padded_size(num_seqs: int, sizes: list[int]) -> int | None:
    """Smallest bucket >= num_seqs, None when the batch is larger than every bucket."""
    return next((s for s in sizes if s >= num_seqs), None)


@dataclass
class DecodeBuffers:
    """Static inputs every graph reads (views of the first `bucket` rows)."""

    input_ids: torch.Tensor  # [max_bs], int64
    positions: torch.Tensor  # [max_bs], int64
    slot_mapping: torch.Tensor  # [max_bs], int64
    block_tables: torch.Tensor  # [max_bs, max_blocks_per_seq], int32
    context_lens: torch.Tensor  # [max_bs], int32

    @classmethod
    def allocate(cls, max_bs: int, max_blocks: int, device: torch.device) -> DecodeBuffers:
        def zeros(*shape: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(zeros(max_bs, dtype=torch.int64), zeros(max_bs, dtype=torch.int64),
                   zeros(max_bs, dtype=torch.int64), zeros(max_bs, max_blocks, dtype=torch.int32),
                   zeros(max_bs, dtype=torch.int32))

    def metadata(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            num_prefills=0, num_prefill_tokens=0, num_decode_tokens=bs,
            slot_mapping=self.slot_mapping[:bs], decode_block_tables=self.block_tables[:bs],
            decode_context_lens=self.context_lens[:bs])

    def fill(self, input_ids: torch.Tensor, positions: torch.Tensor,
             meta: AttentionMetadata, bs: int) -> None:
        """Copy a batch of n <= bs decodes in, reset rows [n, bs) to the harmless padding."""
        n, width = input_ids.shape[0], meta.decode_block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.block_tables[:n, :width].copy_(meta.decode_block_tables)
        self.block_tables[:n, width:].zero_()
        self.context_lens[:n].copy_(meta.decode_context_lens)
        self.input_ids[n:bs].zero_()
        self.positions[n:bs].zero_()
        self.slot_mapping[n:bs].fill_(-1)
        self.block_tables[n:bs].zero_()
        self.context_lens[n:bs].fill_(1)


class CudaGraphModel:
    """Wraps a last-stage model (`forward(input_ids, positions)`) for the ModelRunner: decode
    batches replay a captured graph, anything else calls the model. Exposes the model's
    `compute_logits` and `lm_head` so the runner cannot tell the difference.

    Args:
        model: the eager model (tp=1, single pipeline stage).
        kv_caches: the worker's device caches (the graphs bake their addresses in).
        max_num_seqs: largest decode batch (largest bucket).
        max_blocks_per_seq: block-table width, ceil(max_seq_len / block_size).
    """

    def __init__(self, model: torch.nn.Module, kv_caches: KVCaches, max_num_seqs: int,
                 max_blocks_per_seq: int, device: torch.device) -> None:
        self.model = model
        self.sizes = capture_sizes(max_num_seqs)
        self.buffers = DecodeBuffers.allocate(self.sizes[-1], max_blocks_per_seq, device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}  # bucket -> its graph
        self.outputs: dict[int, torch.Tensor] = {}  # bucket -> [bucket, hidden] static output
        self._capture_all(kv_caches)

    @property
    def lm_head(self) -> Any:
        return getattr(self.model, "lm_head", True)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def _capture_all(self, kv_caches: KVCaches) -> None:
        pool = torch.cuda.graph_pool_handle()
        for bs in reversed(self.sizes):  # NOTE: largest first, the smaller ones reuse its pool
            meta = self.buffers.metadata(bs)
            ids, pos = self.buffers.input_ids[:bs], self.buffers.positions[:bs]
            self.buffers.slot_mapping[:bs].fill_(-1)
            self.buffers.context_lens[:bs].fill_(1)
            with forward_batch(meta, kv_caches):
                self.model(ids, pos)  # warm-up (lazy inits, cuBLAS handles) outside capture
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.outputs[bs] = self.model(ids, pos)
            self.graphs[bs] = graph
        torch.cuda.synchronize()
        logger.info("captured decode CUDA graphs for batch sizes %s", self.sizes)

    def graph_size_for(self, meta: AttentionMetadata | None, num_tokens: int) -> int | None:
        """The bucket to replay for this batch, None to run eagerly."""
        if meta is None or meta.num_prefills or meta.num_decode_tokens != num_tokens:
            return None
        if meta.decode_block_tables.shape[1] > self.buffers.block_tables.shape[1]:
            return None
        return padded_size(num_tokens, self.sizes)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor,
                 *args: torch.Tensor) -> torch.Tensor:  # [num_tokens, hidden]
        meta = get_context().metadata
        bs = None if args else self.graph_size_for(meta, input_ids.shape[0])
        if bs is None:
            return self.model(input_ids, positions, *args)
        self.buffers.fill(input_ids, positions, meta, bs)
        self.graphs[bs].replay()
        return self.outputs[bs][:input_ids.shape[0]]
