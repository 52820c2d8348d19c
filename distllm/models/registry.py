"""Model registry keyed by HF `architectures`; implementations are imported lazily."""
from __future__ import annotations

import importlib

import torch
from torch import nn

from distllm.distributed.parallel_info import ParallelInfo
from distllm.models.dims import get_architecture

# HF architecture name -> (module, class)
_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("distllm.models.llama", "LlamaForCausalLM"),
    "OPTForCausalLM": ("distllm.models.opt", "OPTForCausalLM"),
    "GPT2LMHeadModel": ("distllm.models.gpt2", "GPT2LMHeadModel"),
}

_DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
           "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(architectures: list[str]) -> type[nn.Module]:
    """The model class for the first supported entry of HF `architectures`."""
    for arch in architectures:
        if arch in _MODELS:
            module, name = _MODELS[arch]
            return getattr(importlib.import_module(module), name)
    raise ValueError(f"unsupported model architectures {architectures}; "
                     f"supported: {supported_architectures()}")


def resolve_dtype(dtype: torch.dtype | str, hf_config: dict | None = None) -> torch.dtype:
    """torch dtype from a dtype or a name; "auto" reads the config's `torch_dtype`/`dtype`
    (fp32 when absent)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        name = (hf_config or {}).get("torch_dtype") or (hf_config or {}).get("dtype") or "float32"
        return _DTYPES[str(name).removeprefix("torch.")]
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]


def build_model(hf_config: dict, *, dtype: torch.dtype | str, device: torch.device | str,
                parallel: ParallelInfo | None = None) -> nn.Module:
    """Instantiate (uninitialised weights) the model for an HF config dict on `device`.

    Load weights afterwards with `loader.load_weights` or `loader.init_dummy_weights`."""
    archs = hf_config.get("architectures") or [get_architecture(hf_config)]
    cls = get_model_class(archs)
    model = cls(hf_config, dtype=resolve_dtype(dtype, hf_config), device=device,
                parallel=parallel or ParallelInfo())
    return model.eval()
