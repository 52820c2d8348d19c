"""Fixtures for dataset tests: a tiny tokenizer directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dataset.tokenizer_utils import make_word_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_word_tokenizer(tmp_path_factory.mktemp("tok"))
