"""Test harness: runs a distllm model over a real paged KV cache (per-layer caches, slot
mapping, block tables) in mixed prefill/decode batches, like a minimal model runner."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from distllm.distributed.parallel_info import ParallelInfo
from distllm.layers.context import AttentionMetadata, forward_batch
from distllm.models.dims import model_dims
from distllm.models.loader import load_weights
from distllm.models.registry import build_model

# case name -> (preset, config overrides)
CASES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {}),
    "llama-tied-bias-linear-rope": ("llama", {"tie_word_embeddings": True, "attention_bias": True,
                                             "rope_scaling": {"rope_type": "linear",
                                                              "factor": 2.0}}),
    "llama3": ("llama3", {}),
    "llama3-tied-wide-heads": ("llama3", {"head_dim": 32, "tie_word_embeddings": True}),
    "opt": ("opt", {}),
    "opt-350m": ("opt-350m", {}),
    "gpt2": ("gpt2", {}),
    "gpt2-layer-scaled-inner": ("gpt2", {"scale_attn_by_inverse_layer_idx": True, "n_inner": 96}),
}


class PagedRunner:
    def __init__(self, model: torch.nn.Module, hf_config: dict, *, block_size: int = 4,
                 num_blocks: int = 128, dtype: torch.dtype = torch.float32,
                 parallel: ParallelInfo | None = None) -> None:
        dims, parallel = model_dims(hf_config), parallel or ParallelInfo()
        kv_heads = max(dims.num_kv_heads // parallel.tp_size, 1)
        start, end = parallel.layer_range(dims.num_layers)
        shape = (num_blocks, kv_heads, block_size, dims.head_dim)
        self.model, self.block_size = model, block_size
        self.kv_caches = [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
                          for _ in range(start, end)]
        # NOTE: blocks are handed out in reverse so block ids and positions never coincide
        self.free_blocks = list(range(num_blocks))[::-1]
        self.block_tables: dict[int, list[int]] = {}  # seq id -> block ids
        self.num_cached: dict[int, int] = {}  # seq id -> tokens in the cache

    def _slots(self, seq: int, start: int, end: int) -> list[int]:
        table = self.block_tables.setdefault(seq, [])
        while len(table) * self.block_size < end:
            table.append(self.free_blocks.pop())
        return [table[p // self.block_size] * self.block_size + p % self.block_size
                for p in range(start, end)]

    def _tables(self, seqs: list[int]) -> torch.Tensor:  # [len(seqs), max_blocks], int32
        width = max(len(self.block_tables[s]) for s in seqs)
        rows = [self.block_tables[s] + [0] * (width - len(self.block_tables[s])) for s in seqs]
        return torch.tensor(rows, dtype=torch.int32)

    def step(self, prefills: list[tuple[int, list[int]]],
             decodes: list[tuple[int, int]]) -> torch.Tensor:
        """prefills: (seq id, new prompt tokens) chunks; decodes: (seq id, token).
        Returns fp32 logits [num_tokens, vocab] in batch order (prefills, then decodes)."""
        ids, positions, meta = self.prepare(prefills, decodes)
        with torch.no_grad(), forward_batch(meta, self.kv_caches):
            hidden = self.model(ids, positions)
            return self.model.compute_logits(hidden)

    def prepare(self, prefills: list[tuple[int, list[int]]], decodes: list[tuple[int, int]]
                ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Allocate slots and build (input_ids [n], positions [n], metadata) for one step."""
        ids, positions, slots, cu, cached = [], [], [], [0], []
        for seq, tokens in prefills:
            c = self.num_cached.get(seq, 0)
            ids += tokens
            positions += range(c, c + len(tokens))
            slots += self._slots(seq, c, c + len(tokens))
            cu.append(cu[-1] + len(tokens))
            cached.append(c)
        for seq, token in decodes:
            c = self.num_cached[seq]
            ids.append(token)
            positions.append(c)
            slots += self._slots(seq, c, c + 1)
        meta = self._metadata(prefills, decodes, slots, cu, cached)
        for seq, tokens in prefills:
            self.num_cached[seq] = self.num_cached.get(seq, 0) + len(tokens)
        for seq, _ in decodes:
            self.num_cached[seq] += 1
        return torch.tensor(ids), torch.tensor(positions), meta

    def _metadata(self, prefills: list, decodes: list, slots: list[int], cu: list[int],
                  cached: list[int]) -> AttentionMetadata:
        meta = AttentionMetadata(num_prefills=len(prefills), num_prefill_tokens=cu[-1],
                                 num_decode_tokens=len(decodes),
                                 slot_mapping=torch.tensor(slots, dtype=torch.int64))
        if prefills:
            meta.cu_seqlens_q = torch.tensor(cu, dtype=torch.int32)
            meta.prefill_num_cached = torch.tensor(cached, dtype=torch.int32)
            meta.prefill_block_tables = self._tables([s for s, _ in prefills])
            meta.has_cached_prefix = any(c > 0 for c in cached)
        if decodes:
            seqs = [s for s, _ in decodes]
            meta.decode_block_tables = self._tables(seqs)
            meta.decode_context_lens = torch.tensor([self.num_cached[s] + 1 for s in seqs],
                                                    dtype=torch.int32)
        return meta


def load_pair(path: Path) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(distllm model, transformers model, hf config dict), both fp32."""
    from transformers import AutoModelForCausalLM

    cfg = json.loads((path / "config.json").read_text())
    model = build_model(cfg, dtype=torch.float32, device="cpu")
    load_weights(model, path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    return model, hf, cfg


@torch.no_grad()
def hf_logits(hf: torch.nn.Module, ids: list[int]) -> torch.Tensor:  # [len(ids), vocab]
    return hf(torch.tensor([ids])).logits[0].float()
