"""OPT: learned positions (offset 2), pre- or post-LayerNorm (do_layer_norm_before), optional
project_in/project_out when word_embed_proj_dim != hidden_size, optional final LayerNorm."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from distllm.distributed.parallel_info import ParallelInfo
from distllm.layers.activation import get_act_fn
from distllm.layers.attention import Attention
from distllm.layers.embedding import ParallelLMHead, PositionEmbedding, VocabParallelEmbedding
from distllm.layers.layernorm import LayerNorm
from distllm.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from distllm.models.utils import CausalLM, cache_index, make_layers


def _layer_norm(cfg: dict, dtype: torch.dtype, device: torch.device | str) -> LayerNorm:
    return LayerNorm(cfg["hidden_size"], 1e-5, dtype=dtype, device=device,
                     elementwise_affine=bool(cfg.get("layer_norm_elementwise_affine", True)))


class OPTAttention(nn.Module):
    def __init__(self, cfg: dict, layer_idx: int, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        head_dim, bias = h // heads, bool(cfg.get("enable_bias", True))
        kw = dict(dtype=dtype, device=device, parallel=parallel)
        self.qkv_proj = QKVParallelLinear(h, head_dim, heads, heads, bias=bias, **kw)
        self.out_proj = RowParallelLinear(h, h, bias=bias, **kw)
        self.attn = Attention(self.qkv_proj.num_heads, head_dim, head_dim ** -0.5,
                              self.qkv_proj.num_kv_heads, layer_idx,
                              cache_index(layer_idx, cfg["num_hidden_layers"], parallel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, hidden]
        q_size, kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        return self.out_proj(self.attn(q, k, v))


class OPTDecoderLayer(nn.Module):
    def __init__(self, cfg: dict, layer_idx: int, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        h, bias = cfg["hidden_size"], bool(cfg.get("enable_bias", True))
        kw = dict(dtype=dtype, device=device, parallel=parallel)
        self.pre_norm = bool(cfg.get("do_layer_norm_before", True))
        self.self_attn = OPTAttention(cfg, layer_idx, dtype, device, parallel)
        self.self_attn_layer_norm = _layer_norm(cfg, dtype, device)
        self.fc1 = ColumnParallelLinear(h, cfg["ffn_dim"], bias=bias, **kw)
        self.fc2 = RowParallelLinear(cfg["ffn_dim"], h, bias=bias, **kw)
        self.act = get_act_fn(cfg.get("activation_function", "relu"))
        self.final_layer_norm = _layer_norm(cfg, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, hidden]
        residual = x
        x = self.self_attn_layer_norm(x) if self.pre_norm else x
        x = residual + self.self_attn(x)
        x = x if self.pre_norm else self.self_attn_layer_norm(x)
        residual = x
        x = self.final_layer_norm(x) if self.pre_norm else x
        x = residual + self.fc2(self.act(self.fc1(x)))
        return x if self.pre_norm else self.final_layer_norm(x)


class OPTDecoder(nn.Module):
    def __init__(self, cfg: dict, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        h = cfg["hidden_size"]
        proj = cfg.get("word_embed_proj_dim") or h
        kw = dict(dtype=dtype, device=device)
        self.embed_tokens = self.embed_positions = self.project_in = None
        if parallel.is_first_pp_rank:
            self.embed_tokens = VocabParallelEmbedding(cfg["vocab_size"], proj, parallel=parallel,
                                                       **kw)
            self.embed_positions = PositionEmbedding(cfg["max_position_embeddings"], h,
                                                     offset=2, **kw)
            if proj != h:
                self.project_in = ReplicatedLinear(proj, h, bias=False, **kw)
        self.start_layer, self.end_layer, self.layers = make_layers(
            cfg["num_hidden_layers"], parallel,
            lambda i: OPTDecoderLayer(cfg, i, dtype, device, parallel))
        self.final_layer_norm = self.project_out = None
        if parallel.is_last_pp_rank:
            pre_norm = bool(cfg.get("do_layer_norm_before", True))
            if pre_norm and not cfg.get("_remove_final_layer_norm", False):
                self.final_layer_norm = _layer_norm(cfg, dtype, device)
            if proj != h:
                self.project_out = ReplicatedLinear(h, proj, bias=False, **kw)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed_tokens is not None:
            x = self.embed_tokens(input_ids)
            x = self.project_in(x) if self.project_in is not None else x
            x = x + self.embed_positions(positions)
        else:
            x = intermediate
        for layer in self.layers[self.start_layer:self.end_layer]:
            x = layer(x)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        return self.project_out(x) if self.project_out is not None else x


class OPTModel(nn.Module):
    def __init__(self, cfg: dict, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        self.decoder = OPTDecoder(cfg, dtype, device, parallel)


class OPTForCausalLM(CausalLM):
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
    }

    def __init__(self, cfg: dict, *, dtype: torch.dtype, device: torch.device | str,
                 parallel: ParallelInfo) -> None:
        super().__init__()
        self.parallel = parallel
        self.tie_word_embeddings = bool(cfg.get("tie_word_embeddings", True))
        self.model = OPTModel(cfg, dtype, device, parallel)
        proj = cfg.get("word_embed_proj_dim") or cfg["hidden_size"]
        self.lm_head = None
        if parallel.is_last_pp_rank:
            self.lm_head = ParallelLMHead(cfg["vocab_size"], proj, dtype=dtype, device=device,
                                          parallel=parallel)
            embed = self.model.decoder.embed_tokens
            if self.tie_word_embeddings and embed is not None:
                self.lm_head.tie_to(embed)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.decoder(input_ids, positions, intermediate)

    def remap_weight(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        if name.startswith("decoder."):  # checkpoints saved from OPTModel
            name = "model." + name
        if self.tie_word_embeddings and name == "lm_head.weight":
            return
        yield name, tensor
        if self.tie_word_embeddings and name == "model.decoder.embed_tokens.weight":
            if self.lm_head is not None and self.model.decoder.embed_tokens is None:
                yield "lm_head.weight", tensor
