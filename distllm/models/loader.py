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
            t = t.to(param.dtype)
            loader(param, t) if shard_id is None else loader(param, t, shard_id)
            loaded.setdefault(param_name, set()).add(shard_id)
    _check_complete(params, loaded, model_path)


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


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """`dummy` load format: seeded random weights whose scale keeps activations O(1).

    Matrices ~ N(0, 1/fan_in) with fan_in the last dim, norm weights ~ 1, biases ~ N(0, 0.02^2).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, param in model.named_parameters():
        shape = tuple(param.shape)
        if len(shape) >= 2:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
        elif name.endswith("bias"):
            t = torch.randn(shape, generator=gen) * 0.02
        else:
            t = 1.0 + torch.randn(shape, generator=gen) * 0.02
        param.data.copy_(t.to(param.dtype))
