"""Fixtures: a tiny Llama model and a colocated API server on loopback (reused from
tests/entrypoints), plus helpers to read the server's /metrics."""
from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.entrypoints.conftest import RunningServer, _start


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distllm.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama-rel"), arch="llama", seed=0)


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[RunningServer]:
    yield from _start(tiny_model, max_body_bytes=256 * 1024, max_queued_requests=1000)


def used_kv_blocks(url: str) -> dict[str, float]:
    """instance -> used KV blocks, from the server's /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    pattern = r'^distllm_num_kv_blocks_used\{instance="([^"]+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.M)}


@pytest.fixture
def faulty_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instances built in this test use FaultyRayWorker (inject_fault)."""
    from distllm.engine import fault_tolerance, ray_cluster

    monkeypatch.setattr(ray_cluster, "RemoteRayWorker", fault_tolerance.RemoteFaultyRayWorker)
