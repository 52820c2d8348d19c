"""Profiler: the grid, the relative-error fit (exact on a synthetic timer), a real tiny model
profiled on CPU whose fitted model reproduces its own measurements within the reported residual,
and the CLI's profile loading into simdist as is."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from distllm.profiler.fit import fit_profile_entry, predict_decode, predict_prefill
from distllm.profiler.grid import ProfileGridConfig, decode_step, prefill_step
from distllm.profiler.profiler import (
    ProfileRun,
    measure_transfer,
    profile_model,
    time_grid,
    to_profile,
    transfer_sizes,
)
from distllm.profiler.timers import StepTimer

SMALL_GRID = dict(prefill_batch_sizes=(1, 2, 4), prompt_lens=(8, 32, 64),
                  decode_batch_sizes=(1, 2, 4, 8), context_lens=(16, 64), repeats=3,
                  warmup=1, block_size=8)


class FakeTimer(StepTimer):
    """A known cost model: prefill 2 + 0.01*sum(l) + 1e-5*sum(l^2) ms; decode 1 + 0.001*ctx +
    0.05*batch ms below batch 4, 1.5 + 0.001*ctx + 0.02*batch from 4 on."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(model=SimpleNamespace(dims=SimpleNamespace(vocab_size=100),
                                                            kv_bytes_per_token=125))

    def time_step(self, out: object) -> float:
        if out.prefills:
            lens = [r.num_tokens for r in out.prefills]
            return 1e-3 * (2 + 0.01 * sum(lens) + 1e-5 * sum(x * x for x in lens))
        b = len(out.decodes)
        ctx = sum(r.num_computed_tokens + 1 for r in out.decodes)
        return 1e-3 * ((1 + 0.05 * b) if b < 4 else (1.5 + 0.02 * b)) + 1e-6 * ctx

    def kv_capacity_tokens(self) -> int:
        return 4096

    def transfer_seconds(self, num_blocks: int, repeats: int) -> tuple[int, float]:
        nbytes = num_blocks * 1000
        return nbytes, 0.002 + nbytes / 1e9


def test_grid_respects_budgets_and_builds_disjoint_blocks() -> None:
    grid = ProfileGridConfig(**SMALL_GRID, max_prefill_tokens=128, max_decode_tokens=256)
    assert all(b * n <= 128 for b, n in grid.prefill_points())
    assert (4, 64) not in grid.prefill_points() and (2, 64) in grid.prefill_points()
    out = prefill_step(4, 32, grid, vocab_size=100)
    tables = [r.block_table for r in out.prefills]
    assert len({b for t in tables for b in t}) == sum(len(t) for t in tables) == 16
    dec = decode_step(3, 64, grid, vocab_size=100)
    assert [r.num_computed_tokens for r in dec.decodes] == [63] * 3
    assert all(len(r.block_table) * 8 >= 64 and r.num_tokens == 1 for r in dec.decodes)
    with pytest.raises(ValueError, match="prompt_lens"):
        ProfileGridConfig(prompt_lens=())


def test_fit_recovers_a_known_cost_model_exactly() -> None:
    grid = ProfileGridConfig(**SMALL_GRID)
    run = profile_model(FakeTimer(), grid, progress=False)
    assert run.fit is not None and run.fit.max_rel < 1e-6
    entry = run.fit.entry
    assert entry["prefill"] == pytest.approx([2, 0.01, 1e-5], rel=1e-4)
    assert entry["decode_threshold"] == 4
    assert entry["decode_small"] == pytest.approx([1, 0.001, 0.05], rel=1e-4, abs=1e-9)
    assert entry["decode_large"] == pytest.approx([1.5, 0.001, 0.02], rel=1e-4, abs=1e-9)
    assert run.transfer["gb_s"] == pytest.approx(1.0, rel=1e-6)
    assert run.transfer["latency_ms"] == pytest.approx(2.0, rel=1e-6)
    assert run.host == {}  # no real worker: no host section measured


def test_transfer_sizes_and_a_large_transfer_no_slower_than_the_small() -> None:
    assert transfer_sizes(1000, 512) == (4, 512)  # ~32 MB of 1000-byte blocks: the cache caps it
    assert transfer_sizes(256 << 10, 2048) == (4, 128)  # 32 MB of 256 KB blocks
    assert transfer_sizes(1 << 20, 2048) == (4, 64) and transfer_sizes(1000, 3) == (1, 3)

    class Flat(FakeTimer):  # jitter as large as the transfer: both sizes take 3 ms
        def transfer_seconds(self, num_blocks: int, repeats: int) -> tuple[int, float]:
            return num_blocks * 1000, 0.003

    out = measure_transfer(Flat(), block_size=8)  # 4096 tokens = 512 blocks
    assert [p["blocks"] for p in out["points"]] == [4, 512]
    assert out["gb_s"] == pytest.approx(512 * 1000 / 0.003 / 1e9) and out["latency_ms"] == 0.0
    assert "not slower" in out["note"]


def test_grid_points_take_turns_so_a_load_burst_spreads_over_them() -> None:
    """Warm-ups first, then rounds over every point; a burst (here 3 slow steps in a row,
    x10) costs each point it hits one sample of three, so the medians stay exact."""
    grid = ProfileGridConfig(**SMALL_GRID)
    timer, seen = FakeTimer(), []
    exact = time_grid(timer, grid, vocab_size=100, progress=False)

    class Bursty(FakeTimer):
        def time_step(self, out: object) -> float:
            seen.append(id(out))
            slow = len(seen) in range(40, 43)
            return super().time_step(out) * (10 if slow else 1)

    run = time_grid(Bursty(), grid, vocab_size=100, progress=False)
    points = len(grid.prefill_points()) + len(grid.decode_points())
    assert len(seen) == points * (grid.warmup + grid.repeats)
    rounds = [seen[k * points:(k + 1) * points] for k in range(grid.warmup + grid.repeats)]
    assert all(len(set(r)) == points and r == rounds[0] for r in rounds)
    assert run.prefill == exact.prefill and run.decode == exact.decode


def test_profile_dict_loads_in_simdist_and_predicts_the_fit() -> None:
    from simdist.profile import LatencyProfile

    prefill = [([n] * b, 2 + 0.01 * n * b) for b in (1, 2) for n in (8, 32, 64)]
    decode = [(b, b * c, 1 + 0.001 * b * c + 0.1 * b) for b in (1, 2, 4) for c in (16, 64)]
    run = ProfileRun(prefill, decode, fit_profile_entry(prefill, decode), 4096,
                     {"gb_s": 2.0, "latency_ms": 1.5})
    d = to_profile(run, "toy", kv_bytes_per_token=512, tp=1, pp=1, hardware="cpu")
    prof = LatencyProfile.from_dict(json.loads(json.dumps(d)))
    cost = prof.stage_cost("toy", 1, 1)
    assert cost.prefill_stage(64, 64 * 64) * 1e3 == pytest.approx(
        predict_prefill(run.fit.entry["prefill"], [64]), rel=1e-9)
    assert cost.decode(4, 256) * 1e3 == pytest.approx(predict_decode(run.fit.entry, 4, 256))
    # the measured decode steps ride along, and simdist interpolates them
    assert d["models"]["toy"]["tp"]["1"]["decode_points"] == [list(x) for x in decode]
    assert cost.table is not None and cost.decode(2, 64) * 1e3 == pytest.approx(1 + 0.064 + 0.2)
    assert prof.kv_capacity("toy", 1, 1) == 4096 and prof.kv_capacity("toy", 1, 2) == 8192
    assert prof.bandwidth_gb_s("nvlink") == 2.0 and prof.overhead["transfer_ms"] == 1.5


def test_real_tiny_model_fit_reproduces_its_measurements(tiny_model: Path) -> None:
    """Profile a real engine step on CPU; every measurement lies within the fit's reported
    residual of the fitted model, and the residuals are those of the fitted model."""
    from distllm.config import EngineConfig
    from distllm.profiler.timers import InProcessTimer

    config = EngineConfig.from_kwargs(str(tiny_model), block_size=8, num_kv_blocks=256,
                                      max_num_batched_tokens=512)
    timer = InProcessTimer(config)
    grid = ProfileGridConfig(**SMALL_GRID, max_prefill_tokens=512, max_decode_tokens=2048)
    run = profile_model(timer, grid, progress=False, measure_kv_transfer=False)
    fit = run.fit
    assert fit is not None and run.kv_capacity_tokens == 256 * 8
    assert len(run.prefill) == len(grid.prefill_points()) and len(run.decode) >= 6
    for lens, ms in run.prefill:
        pred = predict_prefill(fit.entry["prefill"], lens)
        assert abs(pred - ms) <= fit.prefill.max_rel * ms * (1 + 1e-9)
    for b, ctx, ms in run.decode:
        pred = predict_decode(fit.entry, b, ctx)
        assert abs(pred - ms) <= fit.decode.max_rel * ms * (1 + 1e-9)
    assert max(abs(r) for r in fit.decode.per_point) == pytest.approx(fit.decode.max_rel)
    assert all(c >= 0 for c in fit.entry["prefill"])  # non-negative fit never goes below 0
    assert fit.prefill.rms_rel <= fit.prefill.max_rel


def test_cli_writes_a_profile_simdist_simulates_with(tiny_model: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    from distllm.entrypoints.cli import main
    from simdist.cli import simulate_main
    from simdist.host import HostSpec
    from simdist.profile import load_profile

    out = tmp_path / "p.json"
    code = main(["profile", "--model", str(tiny_model), "--backend", "inprocess", "--quick",
                 "--no-transfer", "--no-progress", "--num-kv-blocks", "256", "--block-size", "8",
                 "--max-num-batched-tokens", "1024", "--name", "tiny", "-o", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "prefill  fit residual" in text and "decode   fit residual" in text
    prof = load_profile(out)
    assert prof.tps("tiny") == [1] and prof.kv_capacity("tiny", 1) == 2048
    host = json.loads(out.read_text())["host"]  # on CPU: cores + contention coefficients
    spec = HostSpec.from_dict(prof.host)
    assert spec is not None and spec.cores >= 1 and host["cores"] == spec.cores
    assert spec.contention_prefill >= 0 and spec.contention_decode >= 0
    assert "contention" in host["measured"]
    assert simulate_main(["--profile", str(out), "--model", "tiny", "--workload", "humaneval",
                          "--num-requests", "20", "--rate", "2", "--hardware", "a100-80g"]) == 0
    assert "completed" in capsys.readouterr().out


def test_gloo_transfer_moves_the_slab_between_processes() -> None:
    import torch

    from distllm.profiler.gloo_bandwidth import time_gloo_transfer

    shape = (2, 2, 8, 2, 8, 16)  # [2, layers, blocks, heads, block_size, head_dim]
    nbytes, seconds = time_gloo_transfer(shape, torch.float32, repeats=2)
    assert nbytes == 2 * 2 * 8 * 2 * 8 * 16 * 4
    assert 0 < seconds < 60



@pytest.mark.parametrize("async_scheduling", [True, False])
def test_ray_timer_times_decode_steps_as_the_engine_runs_them(
        tiny_model: Path, ray_cluster: None, async_scheduling: bool) -> None:
    """Async scheduling: a decode sample is the interval between results with two steps in
    flight (PIPELINED_STEPS timed + 2 filling and draining the pipeline); otherwise, and for
    prefills, one step from submit to result."""
    from distllm.config import EngineConfig
    from distllm.disagg_config import DisaggConfig
    from distllm.profiler import timers

    config = EngineConfig.from_kwargs(str(tiny_model), block_size=8, num_kv_blocks=64,
                                      max_num_batched_tokens=512)
    timer = timers.RayTimer(config, DisaggConfig(mode="disaggregated",
                                                 async_scheduling=async_scheduling))
    try:
        grid = ProfileGridConfig(**SMALL_GRID)
        calls = {"prefill": 0, "decode": 0}
        for name in calls:
            inst = getattr(timer, name)
            submit = inst.submit

            def counted(out, _submit=submit, _name=name):  # noqa: ANN001, ANN202
                calls[_name] += 1
                return _submit(out)

            inst.submit = counted
        decode_s = timer.time_step(decode_step(2, 16, grid, vocab_size=100))
        prefill_s = timer.time_step(prefill_step(1, 8, grid, vocab_size=100))
        assert decode_s > 0 and prefill_s > 0
        assert calls == {"prefill": 1, "decode": timers.PIPELINED_STEPS + 2
                         if async_scheduling else 1}
        assert timer.decode.max_inflight == (2 if async_scheduling else 1)
    finally:
        timer.close()
