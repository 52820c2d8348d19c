"""Weight loading: sharded safetensors, .bin (+ index), tied embeddings, prefixes, errors,
dummy weights; dims and registry."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from distllm.models.dims import model_dims
from distllm.models.loader import init_dummy_weights, load_weights
from distllm.models.registry import build_model, get_model_class
from distllm.testing import make_tiny_model

IDS = torch.tensor([1, 40, 41, 300, 7, 99])
POS = torch.arange(6)


def _build(path: Path) -> torch.nn.Module:
    return build_model(json.loads((path / "config.json").read_text()), dtype=torch.float32,
                       device="cpu")


@torch.no_grad()
def _logits(path: Path) -> torch.Tensor:
    model = _build(path)
    load_weights(model, path)
    return model.compute_logits(model(IDS, POS))


def _copy_with(src: Path, dst: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    if state is not None:
        save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _sharded_index(names: list[str], file_of: callable) -> dict:
    return {"metadata": {}, "weight_map": {n: file_of(i) for i, n in enumerate(names)}}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("llama"), arch="llama", seed=3)


def test_sharded_safetensors_index(llama_dir: Path, tmp_path: Path) -> None:
    state = load_file(str(llama_dir / "model.safetensors"))
    out = _copy_with(llama_dir, tmp_path / "sharded")
    names = sorted(state)
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for k, file in enumerate(files):
        save_file({n: state[n] for n in names[k::2]}, str(out / file), metadata={"format": "pt"})
    index = _sharded_index(names, lambda i: files[i % 2])
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    torch.testing.assert_close(_logits(out), _logits(llama_dir), atol=0, rtol=0)


@pytest.mark.parametrize("sharded", [False, True])
def test_pytorch_bin(llama_dir: Path, tmp_path: Path, sharded: bool) -> None:
    state = load_file(str(llama_dir / "model.safetensors"))
    out = _copy_with(llama_dir, tmp_path / "bin")
    if sharded:
        names = sorted(state)
        files = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
        for k, file in enumerate(files):
            torch.save({n: state[n] for n in names[k::2]}, out / file)
        index = _sharded_index(names, lambda i: files[i % 2])
        (out / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    else:
        torch.save(state, out / "pytorch_model.bin")
    torch.testing.assert_close(_logits(out), _logits(llama_dir), atol=0, rtol=0)


def test_tied_embeddings_share_the_matrix(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "tied", arch="llama", tie_word_embeddings=True)
    state = load_file(str(path / "model.safetensors"))
    assert "lm_head.weight" not in state
    model = _build(path)
    load_weights(model, path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # a tied checkpoint that still stores lm_head.weight loads too
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    extra = _copy_with(path, tmp_path / "tied_extra", state)
    torch.testing.assert_close(_logits(extra), _logits(path), atol=0, rtol=0)


def test_missing_and_unknown_weights_raise(llama_dir: Path, tmp_path: Path) -> None:
    state = load_file(str(llama_dir / "model.safetensors"))
    missing = dict(state)
    del missing["model.layers.1.self_attn.k_proj.weight"]
    path = _copy_with(llama_dir, tmp_path / "missing", missing)
    with pytest.raises(ValueError, match="qkv_proj"):
        load_weights(_build(path), path)
    unknown = {**state, "model.layers.0.mystery.weight": torch.zeros(2)}
    path = _copy_with(llama_dir, tmp_path / "unknown", unknown)
    with pytest.raises(KeyError, match="mystery"):
        load_weights(_build(path), path)
    empty = _copy_with(llama_dir, tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_weights(_build(empty), empty)


def test_gpt2_checkpoint_without_prefix(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "gpt2", arch="gpt2")
    state = load_file(str(path / "model.safetensors"))
    bare = {n.removeprefix("transformer."): t for n, t in state.items()}
    bare["h.0.attn.bias"] = torch.ones(1, 1, 8, 8)  # old causal-mask buffer, ignored
    other = _copy_with(path, tmp_path / "bare", bare)
    torch.testing.assert_close(_logits(other), _logits(path), atol=0, rtol=0)


def test_opt_checkpoint_saved_from_opt_model(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "opt", arch="opt-350m")
    state = load_file(str(path / "model.safetensors"))
    bare = {n.removeprefix("model."): t for n, t in state.items()}  # "decoder.layers.0...."
    other = _copy_with(path, tmp_path / "bare", bare)
    torch.testing.assert_close(_logits(other), _logits(path), atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["llama3", "opt", "gpt2"])
@torch.no_grad()
def test_bf16_close_to_fp32(tmp_path: Path, arch: str) -> None:
    path = make_tiny_model(tmp_path / arch, arch=arch)
    cfg = json.loads((path / "config.json").read_text())
    model = build_model(cfg, dtype="bfloat16", device="cpu")
    load_weights(model, path)
    assert model.compute_logits(model(IDS, POS)).dtype == torch.float32
    logits = model.compute_logits(model(IDS, POS))
    ref = _logits(path)
    assert (logits - ref).abs().max() < 0.1 * ref.abs().max()
    assert (logits.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.5


def test_dummy_weights_seeded_and_sane(llama_dir: Path) -> None:
    cfg = json.loads((llama_dir / "config.json").read_text())
    models = [build_model(cfg, dtype=torch.float32, device="cpu") for _ in range(3)]
    for model, seed in zip(models, (7, 7, 8), strict=True):
        init_dummy_weights(model, seed)
    with torch.no_grad():
        logits = [m.compute_logits(m(IDS, POS)) for m in models]
    assert torch.equal(logits[0], logits[1])
    assert not torch.equal(logits[0], logits[2])
    assert torch.isfinite(logits[0]).all()
    assert len(set(logits[0].argmax(-1).tolist())) > 1


def test_model_dims_per_architecture(tmp_path: Path) -> None:
    expected = {"llama": (4, 4, 16), "llama3": (4, 2, 16), "opt": (4, 4, 16), "gpt2": (4, 4, 16)}
    for arch, (heads, kv_heads, head_dim) in expected.items():
        cfg = json.loads((make_tiny_model(tmp_path / arch, arch=arch) / "config.json").read_text())
        dims = model_dims(cfg)
        assert (dims.num_heads, dims.num_kv_heads, dims.head_dim) == (heads, kv_heads, head_dim)
        assert (dims.num_layers, dims.hidden_size, dims.vocab_size) == (2, 64, 512)
        assert dims.kv_bytes_per_token(2) == 2 * 2 * kv_heads * head_dim * 2
    with pytest.raises(ValueError, match="unsupported"):
        model_dims({"architectures": ["BertModel"], "model_type": "bert"})
    with pytest.raises(ValueError, match="unsupported"):
        get_model_class(["BertModel"])


def test_dims_and_models_package_do_not_import_torch() -> None:
    code = "import sys, distllm.models.dims, distllm.models; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
