"""Tiny models shared by the end-to-end tests (one per preset, made once per session)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - factory fixture
    """`tiny_model_dir(preset) -> Path`, cached per preset."""
    from distllm.testing import make_tiny_model

    made: dict[str, Path] = {}

    def get(preset: str) -> Path:
        if preset not in made:
            made[preset] = make_tiny_model(tmp_path_factory.mktemp(preset), arch=preset, seed=0)
        return made[preset]

    return get
