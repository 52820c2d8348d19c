"""Soak (short version of evaluation/reliability_report.py's): requests at high concurrency
through the real loopback server with random client disconnects: every request answered or
hung up on by its client, every engine request ended exactly once and counted once in /metrics,
zero KV blocks in use at the end, resident memory flat."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from distllm.config import EngineConfig
from distllm.engine.async_llm import AsyncLLM
from evaluation.reliability_scenarios import Ledger, loopback_server, soak


def _soak(model: Path, num_requests: int, seed: int) -> dict:
    config = EngineConfig.from_kwargs(str(model), num_kv_blocks=256, block_size=8,
                                      max_num_seqs=32, max_model_len=256)
    engine = AsyncLLM.from_engine_config(config)
    ledger = Ledger(engine)
    try:
        with loopback_server(engine) as url:
            result = asyncio.run(soak(url, ledger, num_requests, concurrency=64, seed=seed,
                                      disconnect_p=0.3))
        assert engine.stats()["num_requests"] == 0
        assert not engine.engine.has_unfinished_requests()
    finally:
        engine.shutdown()
    d = result.details
    assert result.no_response == 0, d["outcomes"]
    assert result.blocks_leaked == 0
    assert d["ledger_violations"] == []
    assert d["server_counted"] == d["engine_requests"] > 0  # counted once each
    assert result.affected > 0 and d["outcomes"]["ok"] > 0
    return d


def test_soak_short(tiny_model: Path) -> None:
    d = _soak(tiny_model, 300, seed=0)
    assert d["rss_end_mb"] - d["rss_warm_mb"] < 64, d


@pytest.mark.slow
def test_soak_long(tiny_model: Path) -> None:
    d = _soak(tiny_model, 1500, seed=1)
    assert d["rss_end_mb"] - d["rss_warm_mb"] < 64, d
