"""Llama family (Llama-2, Llama-3 with GQA, rope_theta and linear/llama3 rope scaling, tied or
untied embeddings, optional attention/MLP bias); module names follow HF checkpoints."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from distllm.distributed.parallel_info import ParallelInfo
from distllm.layers.activation import SiluAndMul
from distllm.layers.attention import Attention
from distllm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from distllm.layers.layernorm import RMSNorm
from distllm.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from distllm.layers.rotary import RotaryEmbedding, rope_parameters
from distllm.models.dims import model_dims
from distllm.models.utils import CausalLM, cache_index, make_layers


class LlamaAttention(nn.Module):
    def __init__(self, cfg: dict, layer_idx: int, rotary: RotaryEmbedding, dtype: torch.dtype,
                 device: torch.device | str, parallel: ParallelInfo) -> None:
        super().__init__()
        dims = model_dims(cfg)
        bias = bool(cfg.get("attention_bias", False))
        kw = dict(dtype=dtype, device=device, parallel=parallel)
        self.qkv_proj = QKVParallelLinear(dims.hidden_size, dims.head_dim, dims.num_heads,
                                          dims.num_kv_heads, bias=bias, **kw)
        self.o_proj = RowParallelLinear(dims.num_heads * dims.head_dim, dims.hidden_size,
                                        bias=bias, **kw)
        self.rotary = rotary
        self.attn = Attention(self.qkv_proj.num_heads, dims.head_dim, dims.head_dim ** -0.5,
                              self.qkv_proj.num_kv_heads, layer_idx,
                              cache_index(layer_idx, dims.num_layers, parallel))

    def forward(self, cos_sin: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor
                ) -> torch.Tensor:
        qkv = self.qkv_proj(x)  # [n, (h + 2 * kvh) * d] (this rank's heads)
        q_size, kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q, k = self.rotary(cos_sin, q, k)
        return self.o_proj(self.attn(q, k, v))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: dict, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported Llama hidden_act {cfg.get('hidden_act')!r}")
        h, inter = cfg["hidden_size"], cfg["intermediate_size"]
        bias = bool(cfg.get("mlp_bias", False))
        kw = dict(dtype=dtype, device=device, parallel=parallel)
        self.gate_up_proj = MergedColumnParallelLinear(h, [inter, inter], bias=bias, **kw)
        self.down_proj = RowParallelLinear(inter, h, bias=bias, **kw)
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: dict, layer_idx: int, rotary: RotaryEmbedding, dtype: torch.dtype,
                 device: torch.device | str, parallel: ParallelInfo) -> None:
        super().__init__()
        eps, h = float(cfg.get("rms_norm_eps", 1e-6)), cfg["hidden_size"]
        self.self_attn = LlamaAttention(cfg, layer_idx, rotary, dtype, device, parallel)
        self.mlp = LlamaMLP(cfg, dtype, device, parallel)
        self.input_layernorm = RMSNorm(h, eps, dtype=dtype, device=device)
        self.post_attention_layernorm = RMSNorm(h, eps, dtype=dtype, device=device)

    def forward(self, cos_sin: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor
                ) -> torch.Tensor:
        x = x + self.self_attn(cos_sin, self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: dict, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        dims = model_dims(cfg)
        theta, scaling = rope_parameters(cfg)
        rotary = RotaryEmbedding(dims.head_dim, theta, scaling, device=device)
        self.rotary, self.dtype = rotary, dtype
        self.embed_tokens = None
        if parallel.is_first_pp_rank:
            self.embed_tokens = VocabParallelEmbedding(dims.vocab_size, dims.hidden_size,
                                                       dtype=dtype, device=device,
                                                       parallel=parallel)
        self.start_layer, self.end_layer, self.layers = make_layers(
            dims.num_layers, parallel,
            lambda i: LlamaDecoderLayer(cfg, i, rotary, dtype, device, parallel))
        self.norm = None
        if parallel.is_last_pp_rank:
            self.norm = RMSNorm(dims.hidden_size, float(cfg.get("rms_norm_eps", 1e-6)),
                                dtype=dtype, device=device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed_tokens(input_ids) if self.embed_tokens is not None else intermediate
        cos_sin = self.rotary.cos_sin(positions, self.dtype)
        for layer in self.layers[self.start_layer:self.end_layer]:
            x = layer(cos_sin, x)
        return self.norm(x) if self.norm is not None else x


class LlamaForCausalLM(CausalLM):
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, cfg: dict, *, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        dims = model_dims(cfg)
        self.parallel, self.tie_word_embeddings = parallel, dims.tie_word_embeddings
        self.model = LlamaModel(cfg, dtype, device, parallel)
        self.lm_head = None
        if parallel.is_last_pp_rank:
            self.lm_head = ParallelLMHead(dims.vocab_size, dims.hidden_size, dtype=dtype,
                                          device=device, parallel=parallel)
            if self.tie_word_embeddings and self.model.embed_tokens is not None:
                self.lm_head.tie_to(self.model.embed_tokens)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, positions, intermediate)

    def remap_weight(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        if "rotary_emb.inv_freq" in name:
            return
        if self.tie_word_embeddings and name == "lm_head.weight":
            return  # tied: the embedding matrix is the LM head
        yield name, tensor
        if self.tie_word_embeddings and name == "model.embed_tokens.weight":
            if self.lm_head is not None and self.model.embed_tokens is None:
                yield "lm_head.weight", tensor  # last PP stage without the embedding
