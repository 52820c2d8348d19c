"""Streaming and aborts on one 1P + 1D Ray engine: token-by-token async streaming, abort while
the KV is in flight, and 200 requests with random aborts leaving no block held anywhere."""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distllm.config import EngineConfig
from distllm.disagg_config import DisaggConfig
from distllm.engine.async_disagg import AsyncDisaggLLM, build_async_llm
from distllm.sampling_params import SamplingParams
from tests.disagg.conftest import ENGINE_KWARGS, MAX_TOKENS, greedy_params


@pytest.fixture(scope="module")
def async_llm(ray_cluster: None, tiny_gqa: Path) -> Iterator[AsyncDisaggLLM]:
    config = EngineConfig.from_kwargs(str(tiny_gqa), **ENGINE_KWARGS)
    llm = build_async_llm(config, DisaggConfig(mode="disaggregated"))
    assert isinstance(llm, AsyncDisaggLLM)
    yield llm
    llm.shutdown()


def _assert_no_leaks(llm: AsyncDisaggLLM) -> None:
    engine = llm.engine
    for name, stats in engine.stats()["instances"].items():
        assert stats["num_free_blocks"] == stats["num_blocks"], name
        assert stats["num_running"] == stats["num_waiting"] == 0, name
    assert not engine.has_unfinished_requests()


async def _drain(llm: AsyncDisaggLLM, timeout_s: float = 30.0) -> None:
    """Wait until the engine thread has applied every abort and freed every block."""
    for _ in range(int(timeout_s / 0.01)):
        if not llm.engine.has_unfinished_requests():
            return
        await asyncio.sleep(0.01)


def test_streams_token_by_token(async_llm: AsyncDisaggLLM, prompts: list[list[int]],
                                reference: list[list[int]]) -> None:
    async def run(i: int) -> list:
        return [o async for o in async_llm.generate(prompts[i], greedy_params()[i], f"s{i}")]

    async def main() -> list[list]:
        return await asyncio.gather(*(run(i) for i in range(len(prompts))))

    for i, outs in enumerate(asyncio.run(main())):
        assert outs[-1].finished and outs[-1].token_ids == reference[i]
        assert len(outs) > 1 and len(outs[0].token_ids) < MAX_TOKENS[i]
        assert "".join(o.new_text for o in outs) == outs[-1].text
    stats = async_llm.stats()
    assert set(stats["instances"]) == {"prefill-0", "decode-0"}
    _assert_no_leaks(async_llm)


def test_abort_during_migration_frees_both_sides(async_llm: AsyncDisaggLLM) -> None:
    # NOTE: drives the engine directly; the AsyncLLM thread sleeps while it has no requests
    # (nor blocks still to free), so first let it finish the previous test's leftovers and park.
    engine = async_llm.engine
    for _ in range(1000):
        if not engine.has_unfinished_requests():
            break
        time.sleep(0.01)
    time.sleep(0.2)
    engine.add_request("m", [7] * 30, SamplingParams(max_tokens=50, ignore_eos=True))
    outputs = []
    for _ in range(10_000):
        outputs += engine.step()
        if engine.stats()["num_migrations_in_flight"]:
            break
    assert [len(o.token_ids) for o in outputs] == [1]  # token #1 streamed before the pull
    engine.abort_request("m")
    outputs = engine.step()
    assert outputs[-1].finished and outputs[-1].finish_reason == "abort"
    decode = engine.stats()["instances"]["decode-0"]
    assert decode["num_migrating"] == 1 or decode["num_free_blocks"] == decode["num_blocks"]
    for _ in range(10_000):
        if not engine.has_unfinished_requests():
            break
        assert not engine.step()
    _assert_no_leaks(async_llm)


def test_random_aborts_leave_no_leaks(async_llm: AsyncDisaggLLM) -> None:
    rng = random.Random(1)
    jobs = [([rng.randrange(4, 500) for _ in range(rng.randint(1, 40))], rng.randint(1, 12),
             rng.random()) for _ in range(200)]

    async def run(i: int, prompt: list[int], max_tokens: int, p_abort: float) -> str:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        abort_after = rng.randint(0, 3) if p_abort < 0.3 else None
        count = 0
        async for out in async_llm.generate(prompt, params, f"r{i}"):
            count += 1
            if abort_after is not None and count > abort_after:
                break  # leaving the loop aborts the request
            if out.finished:
                assert out.error is None and len(out.token_ids) == max_tokens
                return "done"
        return "aborted"

    async def main() -> list[str]:
        results = await asyncio.gather(*(run(i, *job) for i, job in enumerate(jobs)))
        await _drain(async_llm)
        return results

    results = asyncio.run(main())
    assert results.count("done") > 100 and results.count("aborted") > 20
    _assert_no_leaks(async_llm)


def test_stop_strings_and_ids_match_the_in_process_engine(
        async_llm: AsyncDisaggLLM, tiny_gqa: Path, prompts: list[list[int]],
        reference: list[list[int]]) -> None:
    from distllm import LLM

    local = LLM(str(tiny_gqa), **ENGINE_KWARGS)
    text = local.engine.tokenizer.decode(reference[1])
    params = [SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True,
                             stop=[text[len(text) // 2:len(text) // 2 + 3]]),
              SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True,
                             stop_token_ids=[reference[1][6]])]
    expected = local.generate([prompts[1]] * 2, params, use_tqdm=False)
    engine = async_llm.engine
    for i, p in enumerate(params):
        engine.add_request(f"stop{i}", prompts[1], p)
    got = {}
    while engine.has_unfinished_requests():
        got.update({o.request_id: o for o in engine.step() if o.finished})
    for i, exp in enumerate(expected):
        out = got[f"stop{i}"]
        assert (out.text, out.token_ids, out.stop_reason) == (exp.text, exp.token_ids,
                                                              exp.stop_reason)
        assert out.finish_reason == "stop" and len(out.token_ids) < 24
    _assert_no_leaks(async_llm)


def test_seeded_sampling_continues_across_the_migration(
        async_llm: AsyncDisaggLLM, tiny_gqa: Path, prompts: list[list[int]]) -> None:
    from distllm import LLM

    params = [SamplingParams(max_tokens=12, temperature=1.0, top_k=50, seed=100 + i,
                             ignore_eos=True) for i in range(len(prompts))]
    expected = LLM(str(tiny_gqa), **ENGINE_KWARGS).generate(prompts, params, use_tqdm=False)
    engine = async_llm.engine
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        engine.add_request(f"seed{i}", prompt, p)
    got = {}
    while engine.has_unfinished_requests():
        got.update({o.request_id: o.token_ids for o in engine.step() if o.finished})
    assert [got[f"seed{i}"] for i in range(len(prompts))] == [o.token_ids for o in expected]
    assert not engine._generator_states
    _assert_no_leaks(async_llm)
