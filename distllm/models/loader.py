"""Weight loading from a local HF directory (safetensors, sharded index files, `.bin` with
weights_only=True) through each parameter's `weight_loader`, and seeded `dummy` weights."""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from distllm.layers.linear import default_weight_loader
from distllm.models.utils import PPMissingLayer

logger = logging.getLogger(__name__)
_UNKNOWN = object()


def checkpoint_files(model_path: str | Path) -> list[Path]:
    """Weight files of an HF model dir, safetensors preferred over `.bin`."""
    path = Path(model_path)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return [path / f for f in sorted(set(weight_map.values()))]
    for pattern in ("*.safetensors", "*.bin"):
        files = sorted(path.glob(pattern))
        if files:
            return files
    raise FileNotFoundError(f"no *.safetensors or *.bin weights in {path}")


def iterate_checkpoint(model_path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the checkpoint, on CPU, one file at a time."""
    for file in checkpoint_files(model_path):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    yield name, f.get_tensor(name)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            yield from state.items()


def _resolve(name: str, mapping: dict[str, tuple[str, str | int]]) -> tuple[str, str | int | None]:
    for part, (target, shard_id) in mapping.items():
        if f".{part}." in name:
            return name.replace(f".{part}.", f".{target}."), shard_id
    return name, None


def _is_other_stage(model: nn.Module, param_name: str) -> bool:
    """True when the name points into a module this pipeline stage left out (None attribute or
    PPMissingLayer); an unknown attribute is not "another stage"."""
    module: object = model
    for part in param_name.split(".")[:-1]:
        module = getattr(module, part, _UNKNOWN)
        if module is _UNKNOWN:
            return False
        if module is None or isinstance(module, PPMissingLayer):
            return True
    return False


def load_weights(model: nn.Module, model_path: str | Path) -> None:
    """Load every checkpoint tensor into its parameter; raises on unknown or missing weights."""
    params = dict(model.named_parameters())
    mapping = getattr(model, "packed_modules_mapping", {})
    loaded: dict[str, set] = {}  # param name -> shard ids loaded (None for unpacked)
    for ckpt_name, tensor in iterate_checkpoint(model_path):
        for name, t in model.remap_weight(ckpt_name, tensor):
            param_name, shard_id = _resolve(name, mapping)
            if param_name not in params:
                if _is_other_stage(model, param_name):
                    continue
                raise KeyError(f"checkpoint weight {ckpt_name!r} matches no model parameter "
                               f"({param_name!r}) in {type(model).__name__}")
            param = params[param_name]
            loader = getattr(param, "weight_loader", default_weight_loader)
            args = (param, t.to(param.dtype)) + (() if shard_id is None else (shard_id,))
            loader(*args)
            loaded.setdefault(param_name, set()).add(shard_id)
    _check_complete(params, loaded, model_path)
    logger.info("loaded %d parameters of %s from %s", len(loaded), type(model).__name__,
                model_path)


def _check_complete(params: dict[str, nn.Parameter], loaded: dict[str, set],
                    model_path: str | Path) -> None:
    missing = []
    for name, param in params.items():
        expected = set(getattr(param, "shard_ids", [None]))
        if not expected <= loaded.get(name, set()):
            missing.append(name)
    if missing:
        raise ValueError(f"{len(missing)} model parameters missing from the checkpoint in "
                         f"{model_path}: {missing[:10]}")


_TOKEN_EMBEDDINGS = ("embed_tokens.weight", "wte.weight")
_POSITION_EMBEDDINGS = ("embed_positions.weight", "wpe.weight")
_OUTPUT_PROJECTIONS = ("o_proj.weight", "down_proj.weight", "out_proj.weight", "fc2.weight",
                       "c_proj.weight")
_FINAL_NORMS = ("model.norm.weight", "transformer.ln_f.weight",
                "model.decoder.final_layer_norm.weight")


def random_weight(name: str, shape: tuple[int, ...], num_layers: int, tied: bool,
                  gen: torch.Generator) -> torch.Tensor:
    """Seeded random fp32 tensor for parameter `name` (matrices in nn.Linear [out, in] layout)
    scaled so that greedy decoding of a random model is not degenerate:
    - token embeddings N(0, 1) when untied; N(0, 1/dim) when tied, so the residual path does
      not make each token its own nearest neighbour (2-cycles); positions N(0, 0.25/dim);
    - matrices N(0, 1/fan_in); residual output projections zero-mean per row (no common-mode
      from ReLU/GELU outputs) and scaled by 1/sqrt(2 * num_layers);
    - final norm weights N(0, 1) (breaks the symmetry of tied heads), other norm weights ~ 1,
      biases N(0, 0.05^2). Shared by the `dummy` load format and distllm.testing."""
    noise = torch.randn(shape, generator=gen)
    if len(shape) < 2:
        if name in _FINAL_NORMS:
            return noise
        return noise * 0.05 if name.endswith("bias") else 1.0 + noise * 0.05
    inv_sqrt_dim = 1.0 / math.sqrt(shape[-1])
    if name.endswith(_TOKEN_EMBEDDINGS):
        return noise * (inv_sqrt_dim if tied else 1.0)
    if name.endswith(_POSITION_EMBEDDINGS):
        return noise * 0.5 * inv_sqrt_dim
    if name.endswith(_OUTPUT_PROJECTIONS):
        noise = (noise - noise.mean(dim=1, keepdim=True)) / math.sqrt(2 * num_layers)
    return noise * inv_sqrt_dim


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """`dummy` load format: seeded random weights (see `random_weight` for the scales)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    num_layers = max(len(m) for m in model.modules() if isinstance(m, nn.ModuleList))
    params = dict(model.named_parameters())  # a tied LM head is listed once, as the embedding
    tied = getattr(model, "lm_head", None) is not None and "lm_head.weight" not in params
    for name, param in params.items():
        t = random_weight(name, tuple(param.shape), num_layers, tied, gen)
        param.data.copy_(t.to(param.dtype))
