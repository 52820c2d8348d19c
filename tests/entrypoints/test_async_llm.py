"""AsyncLLM without HTTP: streaming deltas, concurrency, abort, idle sleep, failures."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distllm.engine.async_llm import AsyncLLM, EngineDeadError, EngineError, QueueFullError
from distllm.sampling_params import SamplingParams
from tests.entrypoints.conftest import GatedEngine, make_engine

GREEDY = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def gated(tiny_model: Path) -> GatedEngine:
    return GatedEngine(make_engine(tiny_model))


@pytest.fixture
def engine(gated: GatedEngine) -> Iterator[AsyncLLM]:
    gated.gate.set()
    llm = AsyncLLM(gated)
    yield llm
    gated.gate.set()
    llm.shutdown()


def _all_free(gated: GatedEngine) -> bool:
    deadline = time.monotonic() + 10
    bm = gated.block_manager
    while bm.num_free_blocks != bm.num_blocks and time.monotonic() < deadline:
        time.sleep(0.01)
    return bm.num_free_blocks == bm.num_blocks and not gated.has_unfinished_requests()


async def _collect(engine: AsyncLLM, prompt: str | list[int],
                   params: SamplingParams = GREEDY) -> list:
    return [out async for out in engine.generate(prompt, params)]


def test_deltas_add_up_to_the_final_output(engine: AsyncLLM, gated: GatedEngine) -> None:
    outputs = asyncio.run(_collect(engine, "Once upon a time"))
    final = outputs[-1]
    assert final.finished and all(not o.finished for o in outputs[:-1])
    assert len(final.token_ids) == 20 and final.finish_reason == "length"
    assert "".join(o.new_text for o in outputs) == final.text
    assert _all_free(gated)


def test_concurrent_requests_match_sequential_ones(engine: AsyncLLM) -> None:
    prompts = ["Once upon a time", "Good morning", "Water boils at", "The quick brown fox"]

    async def run() -> tuple[list, list]:
        together = await asyncio.gather(*(_collect(engine, p) for p in prompts))
        alone = [await _collect(engine, p) for p in prompts]
        return together, alone

    together, alone = asyncio.run(run())
    assert [t[-1].token_ids for t in together] == [a[-1].token_ids for a in alone]


def test_leaving_early_aborts_and_frees_blocks(engine: AsyncLLM, gated: GatedEngine) -> None:
    long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)

    async def run() -> None:
        async for _ in engine.generate("Once upon a time", long):
            break

    asyncio.run(run())
    assert _all_free(gated)
    assert engine.stats()["num_requests"] == 0


def test_abort_ends_the_stream_with_finish_reason_abort(engine: AsyncLLM,
                                                        gated: GatedEngine) -> None:
    long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)

    async def run() -> list:
        outputs = []
        async for out in engine.generate("Good morning", long, request_id="x"):
            outputs.append(out)
            if len(outputs) == 1:
                await engine.abort("x")
        return outputs

    outputs = asyncio.run(run())
    assert outputs[-1].finished and outputs[-1].finish_reason == "abort"
    assert len(outputs[-1].token_ids) < 200
    assert _all_free(gated)


def test_engine_sleeps_while_idle(engine: AsyncLLM, gated: GatedEngine) -> None:
    asyncio.run(_collect(engine, "a"))
    steps = gated.num_steps
    time.sleep(0.2)
    assert gated.num_steps == steps
    asyncio.run(_collect(engine, "b"))  # and wakes up for the next request
    assert gated.num_steps > steps


def test_queue_limit_and_engine_errors(tiny_model: Path, gated: GatedEngine) -> None:
    llm = AsyncLLM(gated, max_queued_requests=0)
    try:
        with pytest.raises(QueueFullError):
            asyncio.run(_collect(llm, "hi"))
    finally:
        llm.shutdown()
    llm = AsyncLLM(gated)
    try:
        with pytest.raises(EngineError, match="exceeds max_model_len"):
            asyncio.run(_collect(llm, list(range(3, 400))))  # rejected in the engine thread
        gated.fail_at_step = gated.num_steps
        with pytest.raises(EngineError, match="injected step failure"):
            asyncio.run(_collect(llm, "hi"))
        assert len(asyncio.run(_collect(llm, "hi"))[-1].token_ids) == 20  # still serving
    finally:
        llm.shutdown()
    with pytest.raises(EngineDeadError):
        asyncio.run(_collect(llm, "hi"))
    assert not llm.is_running


class _BrokenAdd(GatedEngine):
    def add_request(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("engine state corrupted")


def test_engine_thread_death_fails_requests_and_health(gated: GatedEngine) -> None:
    import urllib.error
    import urllib.request

    from distllm.entrypoints.api_server import build_app
    from tests.entrypoints.conftest import serve_in_thread

    llm = AsyncLLM(_BrokenAdd(gated._engine))
    url, server, thread = serve_in_thread(build_app(llm))
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            assert resp.status == 200
        with pytest.raises(EngineDeadError, match="engine state corrupted"):
            asyncio.run(_collect(llm, "hi"))
        assert not llm.is_running
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + "/health", timeout=10)
        assert info.value.code == 503
    finally:
        server.should_exit = True
        thread.join(10)
        llm.shutdown()
