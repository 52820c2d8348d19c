"""GPT-2: learned positions, pre-LayerNorm, tied LM head. HF stores Conv1D weights as
[in, out], so they are transposed on load; the fused c_attn is split into q/k/v for TP."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from distllm.distributed.parallel_info import ParallelInfo
from distllm.layers.activation import get_act_fn
from distllm.layers.attention import Attention
from distllm.layers.embedding import ParallelLMHead, PositionEmbedding, VocabParallelEmbedding
from distllm.layers.layernorm import LayerNorm
from distllm.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from distllm.models.utils import CausalLM, cache_index, make_layers

_CONV1D = ("c_attn.weight", "c_proj.weight", "c_fc.weight")


class GPT2Attention(nn.Module):
    def __init__(self, cfg: dict, layer_idx: int, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        h, heads = cfg["n_embd"], cfg["n_head"]
        head_dim = h // heads
        kw = dict(dtype=dtype, device=device, parallel=parallel)
        self.c_attn = QKVParallelLinear(h, head_dim, heads, heads, bias=True, **kw)
        for param in (self.c_attn.weight, self.c_attn.bias):
            param.weight_loader = self._load_fused_qkv
            del param.shard_ids
        self.c_proj = RowParallelLinear(h, h, bias=True, **kw)
        scale = head_dim ** -0.5 if cfg.get("scale_attn_weights", True) else 1.0
        if cfg.get("scale_attn_by_inverse_layer_idx", False):
            scale /= layer_idx + 1
        self.attn = Attention(self.c_attn.num_heads, head_dim, scale, self.c_attn.num_kv_heads,
                              layer_idx, cache_index(layer_idx, cfg["n_layer"], parallel))

    def _load_fused_qkv(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        for shard_id, part in zip("qkv", loaded.chunk(3, dim=0), strict=True):
            self.c_attn.weight_loader(param, part, shard_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, hidden]
        q_size = self.c_attn.q_size
        q, k, v = self.c_attn(x).split([q_size, q_size, q_size], dim=-1)
        return self.c_proj(self.attn(q, k, v))


class GPT2MLP(nn.Module):
    def __init__(self, cfg: dict, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        h = cfg["n_embd"]
        inner = cfg.get("n_inner") or 4 * h
        kw = dict(dtype=dtype, device=device, parallel=parallel)
        self.c_fc = ColumnParallelLinear(h, inner, bias=True, **kw)
        self.c_proj = RowParallelLinear(inner, h, bias=True, **kw)
        self.act = get_act_fn(cfg.get("activation_function", "gelu_new"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, cfg: dict, layer_idx: int, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        h, eps = cfg["n_embd"], float(cfg.get("layer_norm_epsilon", 1e-5))
        self.ln_1 = LayerNorm(h, eps, dtype=dtype, device=device)
        self.attn = GPT2Attention(cfg, layer_idx, dtype, device, parallel)
        self.ln_2 = LayerNorm(h, eps, dtype=dtype, device=device)
        self.mlp = GPT2MLP(cfg, dtype, device, parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, cfg: dict, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        h = cfg["n_embd"]
        self.wte = self.wpe = self.ln_f = None
        if parallel.is_first_pp_rank:
            self.wte = VocabParallelEmbedding(cfg["vocab_size"], h, dtype=dtype, device=device,
                                              parallel=parallel)
            self.wpe = PositionEmbedding(cfg["n_positions"], h, dtype=dtype, device=device)
        self.start_layer, self.end_layer, self.h = make_layers(
            cfg["n_layer"], parallel, lambda i: GPT2Block(cfg, i, dtype, device, parallel))
        if parallel.is_last_pp_rank:
            self.ln_f = LayerNorm(h, float(cfg.get("layer_norm_epsilon", 1e-5)), dtype=dtype,
                                  device=device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate: torch.Tensor | None = None) -> torch.Tensor:
        x = intermediate if self.wte is None else self.wte(input_ids) + self.wpe(positions)
        for block in self.h[self.start_layer:self.end_layer]:
            x = block(x)
        return self.ln_f(x) if self.ln_f is not None else x


class GPT2LMHeadModel(CausalLM):
    def __init__(self, cfg: dict, *, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        self.parallel = parallel
        self.transformer = GPT2Model(cfg, dtype, device, parallel)
        self.lm_head = None
        if parallel.is_last_pp_rank:
            self.lm_head = ParallelLMHead(cfg["vocab_size"], cfg["n_embd"], dtype=dtype,
                                          device=device, parallel=parallel)
            if self.transformer.wte is not None:
                self.lm_head.tie_to(self.transformer.wte)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate: torch.Tensor | None = None) -> torch.Tensor:
        return self.transformer(input_ids, positions, intermediate)

    def remap_weight(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            return  # causal-mask buffers; the LM head is always tied
        if not name.startswith("transformer."):  # original checkpoints have no prefix
            name = "transformer." + name
        if name.endswith(_CONV1D):
            tensor = tensor.t()
        yield name, tensor
        if name == "transformer.wte.weight" and self.lm_head is not None \
                and self.transformer.wte is None:
            yield "lm_head.weight", tensor
