"""Overload on the colocated server: a burst beyond the bounded queue gets 503 + Retry-After
(every request answered exactly once), a prompt beyond the KV capacity is refused up front with
400, and swap / recompute under memory pressure lose no request."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from distllm.config import EngineConfig
from distllm.engine.llm_engine import LLMEngine
from distllm.entrypoints.http_common import ServerConfig
from tests.entrypoints.conftest import RunningServer, running_server
from tests.reliability.conftest import used_kv_blocks

NUM_KV_BLOCKS, BLOCK_SIZE = 10, 8  # 80 tokens of KV: a few requests at a time


def _start(model: Path, max_queued: int | None, **cache: object) -> Iterator[RunningServer]:
    config = EngineConfig.from_kwargs(str(model), num_kv_blocks=NUM_KV_BLOCKS,
                                      block_size=BLOCK_SIZE, max_num_seqs=8, max_model_len=256,
                                      **cache)
    server_config = ServerConfig(served_model_name="tiny", retry_after_s=3)
    yield from running_server(LLMEngine(config), server_config, max_queued)


@pytest.fixture(scope="module")
def small_server(tiny_model: Path) -> Iterator[RunningServer]:
    yield from _start(tiny_model, max_queued=4, swap_space_gb=0.001)


async def _post(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict, dict]:
    async with session.post(url, json=body) as resp:
        return resp.status, dict(resp.headers), json.loads(await resp.text())


def test_prompt_beyond_kv_capacity_is_refused_up_front(small_server: RunningServer) -> None:
    capacity = small_server.engine.kv_capacity_tokens
    assert capacity == NUM_KV_BLOCKS * BLOCK_SIZE

    async def run() -> tuple[int, dict, dict]:
        async with aiohttp.ClientSession() as s:
            return await _post(s, small_server.url + "/generate",
                               {"prompt": list(range(3, 3 + capacity + 1)), "max_tokens": 2})

    steps = small_server.gated.num_steps
    status, _, answer = asyncio.run(run())
    assert status == 400 and answer["error"]["param"] == "prompt"
    assert "KV cache" in answer["error"]["message"]
    assert small_server.gated.num_steps == steps  # never reached the engine


def test_burst_beyond_the_queue_gets_503_with_retry_after(small_server: RunningServer) -> None:
    gated = small_server.gated

    async def run() -> list[tuple[int, dict, dict]]:
        async with aiohttp.ClientSession() as s:
            gated.gate.clear()  # the engine stalls: requests pile up in the queue
            body = {"prompt": "hello there", "max_tokens": 4, "ignore_eos": True}
            tasks = [asyncio.ensure_future(_post(s, small_server.url + "/generate", body))
                     for _ in range(20)]
            while sum(t.done() for t in tasks) < 16:  # the 5th.. 20th are refused at once
                await asyncio.sleep(0.01)
            gated.gate.set()
            return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    statuses = sorted(r[0] for r in results)
    assert statuses == [200] * 4 + [503] * 16
    for status, headers, answer in results:
        if status == 503:
            assert headers["Retry-After"] == "3"
            assert answer["error"]["type"] == "server_overloaded"
    assert small_server.all_blocks_free()
    assert set(used_kv_blocks(small_server.url).values()) == {0.0}


@pytest.mark.parametrize("swap_space_gb", [0.0, 0.001], ids=["recompute", "swap"])
def test_memory_pressure_loses_no_request(tiny_model: Path, swap_space_gb: float) -> None:
    server_iter = _start(tiny_model, max_queued=None, swap_space_gb=swap_space_gb)
    server = next(server_iter)
    try:
        async def run() -> list[tuple[int, dict, dict]]:
            async with aiohttp.ClientSession() as s:
                bodies = [{"prompt": list(range(3 + i, 20 + i)), "max_tokens": 24,
                           "ignore_eos": True} for i in range(12)]
                return await asyncio.gather(*(_post(s, server.url + "/generate", b)
                                              for b in bodies))

        results = asyncio.run(run())
        assert [r[0] for r in results] == [200] * 12
        assert all(len(r[2]["token_ids"]) == 24 for r in results)
        assert sum(r[2]["lifetime_events"] != [] for r in results) == 12
        text = _metrics(server.url)
        assert 'distllm_num_preemptions_total' in text
        assert _preemptions(text) > 0  # the KV cache really ran out
        assert server.all_blocks_free()
    finally:
        server_iter.close()


def _metrics(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def _preemptions(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("distllm_num_preemptions_total"):
            return float(line.split()[-1])
    return 0.0


def test_kv_capacity_of_the_ray_engine_takes_live_instances_per_stage() -> None:
    from types import SimpleNamespace

    from distllm.engine.async_disagg import AsyncDisaggLLM

    class FakeDisaggEngine:
        config = SimpleNamespace(cache=SimpleNamespace(block_size=8))

        def has_unfinished_requests(self) -> bool:
            return False

        def stats(self) -> dict:
            inst = [("prefill-0", "prefill", 10, True), ("prefill-1", "prefill", 20, True),
                    ("decode-0", "decode", 4, True), ("decode-1", "decode", 100, False)]
            return {"num_migrations_in_flight": 0, "instances": {
                name: {"kind": kind, "num_blocks": n, "num_free_blocks": n, "alive": alive}
                for name, kind, n, alive in inst}}

        def shutdown(self) -> None:
            pass

    engine = AsyncDisaggLLM(FakeDisaggEngine())  # type: ignore[arg-type]
    try:
        assert engine.kv_capacity_tokens == 4 * 8  # the largest live decode instance
    finally:
        engine.shutdown()
