"""Rotary position embedding (neox / rotate-half layout, as in HF Llama) with default, linear
and Llama-3 frequency scaling. cos/sin are computed from the positions on the fly in fp32."""
from __future__ import annotations

import math

import torch
from torch import nn


def rope_parameters(hf_config: dict) -> tuple[float, dict | None]:
    """(rope_theta, scaling dict or None) from either the transformers>=5 `rope_parameters`
    field or the older `rope_theta` + `rope_scaling` fields."""
    params = hf_config.get("rope_parameters")
    if isinstance(params, dict):
        theta = float(params.get("rope_theta", hf_config.get("rope_theta", 10000.0)))
        kind = params.get("rope_type", params.get("type", "default"))
        return theta, (None if kind == "default" else {**params, "rope_type": kind})
    theta = float(hf_config.get("rope_theta", 10000.0))
    scaling = hf_config.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        scaling = None if kind == "default" else {**scaling, "rope_type": kind}
    return theta, scaling or None


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def compute_inv_freq(rotary_dim: int, base: float, scaling: dict | None) -> torch.Tensor:
    """[rotary_dim // 2] fp32 inverse frequencies."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (base ** exponent)
    if scaling is None:
        return inv_freq
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    raise ValueError(f"unsupported rope scaling type {kind!r} (supported: linear, llama3)")


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, base: float, scaling: dict | None = None, *,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.head_dim = head_dim
        inv_freq = compute_inv_freq(head_dim, base, scaling).to(device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [head_dim // 2], fp32

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = x.view(n, -1, self.head_dim)  # [n, heads, head_dim]
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
        return (x * cos + rotated * sin).view(n, -1)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each [n, 1, head_dim] in `dtype`, for positions [n] (int64); computed
        once per forward and shared by all layers."""
        freqs = positions.float().unsqueeze(-1) * self.inv_freq.unsqueeze(0)  # [n, d/2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # [n, 1, d]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(
        self,
        cos_sin: tuple[torch.Tensor, torch.Tensor],  # from cos_sin(positions)
        query: torch.Tensor,  # [n, num_heads * head_dim]
        key: torch.Tensor,  # [n, num_kv_heads * head_dim]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = cos_sin
        return self._rotate(query, cos, sin), self._rotate(key, cos, sin)
