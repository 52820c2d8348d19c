"""Memory pressure and failures on the Ray engine: a tiny decode cache back-pressures prefill
and forces recompute, swap space is used then exhausted, with outputs equal to the reference;
a dead worker fails its requests with a message instead of hanging."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray

from distllm.config import EngineConfig
from distllm.disagg_config import DisaggConfig
from distllm.engine.disagg_controller import DisaggEngine
from distllm.engine.outputs import RequestOutput
from tests.disagg.conftest import ENGINE_KWARGS, greedy_params

BLOCK_BYTES = 2 * 4 * 2 * 8 * 16 * 4  # K+V x layers x KV heads x block_size x head_dim x fp32


def _run(engine: DisaggEngine, prompts: list[list[int]], deadline_s: float = 60.0
         ) -> tuple[list[RequestOutput], list[dict]]:
    """Outputs in input order and the engine stats after every step."""
    for i, (prompt, params) in enumerate(zip(prompts, greedy_params(), strict=True)):
        engine.add_request(str(i), prompt, params)
    done: dict[str, RequestOutput] = {}
    history = []
    end = time.monotonic() + deadline_s
    while engine.has_unfinished_requests():
        assert time.monotonic() < end, "the engine hung"
        done.update({o.request_id: o for o in engine.step() if o.finished})
        history.append(engine.stats())
    return [done[str(i)] for i in range(len(prompts))], history


def _engine(model: Path, **disagg: object) -> DisaggEngine:
    kwargs = {**ENGINE_KWARGS, **disagg.pop("engine", {})}  # type: ignore[dict-item]
    return DisaggEngine(EngineConfig.from_kwargs(str(model), **kwargs), DisaggConfig(**disagg))


def _assert_all_free(engine: DisaggEngine) -> None:
    for name, s in engine.stats()["instances"].items():
        assert s["num_free_blocks"] == s["num_blocks"], name
        assert s["num_free_swap_blocks"] == engine.instances[0].block_manager.swap.num_blocks


@pytest.mark.slow
def test_tiny_decode_cache_back_pressures_prefill_and_recomputes(
        ray_cluster: None, tiny_gqa: Path, prompts: list[list[int]],
        reference: list[list[int]]) -> None:
    engine = _engine(tiny_gqa, prefill_num_kv_blocks=12, decode_num_kv_blocks=8)
    try:
        outputs, history = _run(engine, prompts)
        assert [o.token_ids for o in outputs] == reference
        prefill = [h["instances"]["prefill-0"] for h in history]
        assert any(p["num_waiting"] and h["num_awaiting_pull"] and p["num_free_blocks"] < 6
                   for p, h in zip(prefill, history, strict=True))  # prefill stalled
        assert sum(o.num_preemptions for o in outputs) > 0
        _assert_all_free(engine)
    finally:
        engine.shutdown()


@pytest.mark.slow
def test_swap_then_recompute_when_swap_space_is_exhausted(
        ray_cluster: None, tiny_gqa: Path, prompts: list[list[int]],
        reference: list[list[int]]) -> None:
    engine = _engine(tiny_gqa, decode_num_kv_blocks=9, engine=dict(
        preemption_mode="swap", swap_space_gb=5 * BLOCK_BYTES / 2**30))
    try:
        outputs, history = _run(engine, prompts)
        assert [o.token_ids for o in outputs] == reference
        assert engine.instances[1].block_manager.swap.num_blocks == 5
        assert max(h["instances"]["decode-0"]["num_swapped"] for h in history) > 0
        assert sum(o.num_preemptions for o in outputs) > 0
        _assert_all_free(engine)
    finally:
        engine.shutdown()


def test_dead_worker_fails_requests_with_a_message(
        ray_cluster: None, tiny_gqa: Path, prompts: list[list[int]]) -> None:
    engine = _engine(tiny_gqa, step_timeout_s=20.0)
    try:
        for i, (prompt, params) in enumerate(zip(prompts, greedy_params(), strict=True)):
            engine.add_request(str(i), prompt, params)
        while not engine.decode[0].scheduler.running:
            engine.step()
        ray.kill(engine.decode[0].ray.workers[0])
        done = {}
        end = time.monotonic() + 30
        while engine.has_unfinished_requests():
            assert time.monotonic() < end, "the engine hung"
            done.update({o.request_id: o for o in engine.step() if o.finished})
        assert len(done) == len(prompts) and all(o.error for o in done.values())
        assert any("decode-0" in o.error for o in done.values())
        assert not engine.decode[0].is_alive
        engine.add_request("late", prompts[0], greedy_params()[0])  # prefill still works
        late = []
        while engine.has_unfinished_requests():
            assert time.monotonic() < end, "the engine hung"
            late += [o for o in engine.step() if o.finished]
        assert len(late[0].token_ids) == 1 and "no live decode instance" in late[0].error
    finally:
        engine.shutdown()


def test_step_trace_records_every_step_and_migration(
        ray_cluster: None, tiny_gqa: Path, prompts: list[list[int]],
        reference: list[list[int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DISTLLM_STEP_TRACE: the driver's submissions, the workers' steps (matched by instance and
    step number) and every migration and KV receive land in the trace; outputs unchanged."""
    from distllm import tracing
    from evaluation.step_trace_report import analyze, load

    monkeypatch.setenv("DISTLLM_STEP_TRACE", str(tmp_path))
    monkeypatch.setattr(tracing, "_traces", {})
    engine = _engine(tiny_gqa)
    try:
        outputs, _ = _run(engine, prompts)
        assert [o.token_ids for o in outputs] == reference
    finally:
        engine.shutdown()
    trace = load(str(tmp_path))
    for inst in ("prefill-0", "decode-0"):
        submitted = sorted(seq for name, seq in trace["submits"] if name == inst)
        assert [row[0] for row in trace["steps"][inst]] == submitted  # every step, matched
        assert all(recv <= end for _, recv, end, _, _ in trace["steps"][inst])
    assert sum(row[3] for row in trace["steps"]["prefill-0"]) == len(prompts)
    assert len(trace["migrations"]) == len(prompts) == len(trace["kv"]["decode-0"])
    assert [inst for _, inst, _ in trace["routes"]] == ["prefill-0"] * len(prompts)
    report = analyze(trace)["instances"]["decode-0"]
    assert report["kv_receives"] == len(prompts) and report["decode_ms_by_batch"]
