"""Fixtures: tiny HF model dirs per test case, built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from distllm.testing import make_tiny_model
from tests.models.model_harness import CASES


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {name: make_tiny_model(root / name, arch=preset, seed=0, **overrides)
            for name, (preset, overrides) in CASES.items()}
