"""Engine configs: validation messages, CLI round trip, flat keyword arguments."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from distllm.config import CacheConfig, EngineConfig, ModelConfig, ParallelConfig, SchedulerConfig


def _model_dir(tmp_path: Path, max_positions: int = 256) -> Path:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 100,
              "max_position_embeddings": max_positions}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_model_config_reads_dims_and_derives_lengths(tmp_path: Path) -> None:
    config = ModelConfig(model=str(_model_dir(tmp_path)))
    assert config.max_seq_len == 256
    assert config.dims.num_kv_heads == 2 and config.dims.head_dim == 16
    assert config.kv_bytes_per_token == 2 * 2 * 2 * 16 * 4
    assert ModelConfig(model=str(tmp_path), max_model_len=100).max_seq_len == 100


@pytest.mark.parametrize(("build", "match"), [
    (lambda d: ModelConfig(model=d, dtype="int8"), "dtype"),
    (lambda d: ModelConfig(model=d, load_format="npz"), "load_format"),
    (lambda d: ModelConfig(model=d, max_model_len=1000), "max_position_embeddings"),
    (lambda d: ModelConfig(model=d + "/missing"), "config.json"),
    (lambda d: CacheConfig(block_size=0), "block_size"),
    (lambda d: CacheConfig(watermark=1.0), "watermark"),
    (lambda d: CacheConfig(swap_space_gb=-1), "swap_space_gb"),
    (lambda d: ParallelConfig(tp=0), "tp"),
    (lambda d: SchedulerConfig(max_num_seqs=0), "max_num_seqs"),
    (lambda d: SchedulerConfig(prefill_saturation_tokens=0), "prefill_saturation_tokens"),
    (lambda d: SchedulerConfig(preemption_mode="evict"), "preemption_mode"),
    (lambda d: EngineConfig(ModelConfig(model=d), scheduler=SchedulerConfig(
        max_num_batched_tokens=100)), "max_num_batched_tokens"),
    (lambda d: EngineConfig(ModelConfig(model=d), device="tpu"), "device"),
])
def test_invalid_configs_say_why(tmp_path: Path, build, match: str) -> None:  # noqa: ANN001
    d = str(_model_dir(tmp_path))
    with pytest.raises(ValueError, match=match):
        build(d)


def test_cli_round_trip(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    EngineConfig.add_cli_args(parser)
    ns = parser.parse_args(["--model", str(_model_dir(tmp_path)), "--block-size", "8",
                            "--num-kv-blocks", "64", "--max-num-seqs", "4", "--dtype", "bfloat16",
                            "--prefill-saturation-tokens", "256"])
    config = EngineConfig.from_cli_args(ns)
    assert config.cache.block_size == 8 and config.cache.num_kv_blocks == 64
    assert config.scheduler.prefill_saturation_tokens == 256
    assert config.scheduler.max_num_seqs == 4 and config.model.dtype == "bfloat16"


def test_from_kwargs_routes_flat_names(tmp_path: Path) -> None:
    config = EngineConfig.from_kwargs(str(_model_dir(tmp_path)), block_size=8, max_num_seqs=3,
                                      tp=1, seed=5, device="cpu")
    assert config.cache.block_size == 8 and config.scheduler.max_num_seqs == 3
    assert config.model.seed == 5
    with pytest.raises(TypeError, match="bogus"):
        EngineConfig.from_kwargs(str(tmp_path), bogus=1)


def test_cache_blocks_from_memory_or_count() -> None:
    assert CacheConfig(num_kv_blocks=7).num_device_blocks(block_bytes=1024) == 7
    assert CacheConfig(kv_cache_memory_gb=1.0).num_device_blocks(block_bytes=2**20) == 1024
    assert CacheConfig(swap_space_gb=0.5).num_swap_blocks(block_bytes=2**20) == 512
