"""Model definitions; `dims` is pure Python, `registry`/`loader` import torch lazily on use."""
from __future__ import annotations

from distllm.models.dims import ModelDims, model_dims

__all__ = ["ModelDims", "model_dims"]
