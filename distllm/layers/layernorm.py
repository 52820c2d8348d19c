"""RMSNorm (Llama) and LayerNorm (OPT, GPT-2); statistics computed in fp32 like transformers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, *, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype, device=device),
                                   requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, hidden]
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


class LayerNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, *, dtype: torch.dtype,
                 device: torch.device | str, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.eps, self.hidden_size = eps, hidden_size
        self.weight = self.bias = None
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype, device=device),
                                       requires_grad=False)
            self.bias = nn.Parameter(torch.zeros(hidden_size, dtype=dtype, device=device),
                                     requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, hidden]
        return F.layer_norm(x, (self.hidden_size,), self.weight, self.bias, self.eps)
