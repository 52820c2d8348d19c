"""The tiny Llama-3-style model the profiler tests time (one per test session)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distllm.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("prof"), arch="llama3", seed=0,
                           hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512)
