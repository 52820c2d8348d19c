"""ParallelInfo, and models under tensor parallelism (2 gloo processes) and pipeline
parallelism (2 stages in one process) against the single-rank model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distllm.distributed.parallel_info import ParallelInfo, pp_layer_range
from distllm.layers.context import forward_batch
from distllm.models.loader import load_weights
from distllm.models.registry import build_model
from distllm.testing import make_tiny_model
from tests.models.model_harness import PagedRunner

# case -> (preset, overrides); llama-kv1 replicates its single KV head over the TP ranks
TP_CASES = {"llama3": ("llama3", {}), "llama-kv1": ("llama", {"num_key_value_heads": 1}),
            "opt-350m": ("opt-350m", {}), "gpt2": ("gpt2", {})}
PROMPTS = [[3, 17, 250, 99, 41, 7, 300], [20, 21, 22, 23, 24]]


def _run(path: Path, parallel: ParallelInfo) -> torch.Tensor:  # [num_tokens_total, vocab]
    cfg = json.loads((path / "config.json").read_text())
    model = build_model(cfg, dtype=torch.float32, device="cpu", parallel=parallel)
    load_weights(model, path)
    runner = PagedRunner(model, cfg, parallel=parallel)
    first = runner.step([(0, PROMPTS[0]), (1, PROMPTS[1])], [])
    second = runner.step([], [(0, 5), (1, 6)])
    return torch.cat([first, second])


def _tp_worker(rank: int, paths: list[str], store: str, out: str) -> None:
    import torch.distributed as dist

    from distllm.distributed.collectives import set_tp_group

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    set_tp_group(dist.group.WORLD)
    try:
        results = [_run(Path(p), ParallelInfo(tp_rank=rank, tp_size=2)) for p in paths]
        if rank == 0:
            torch.save(results, out)
        dist.barrier()  # NOTE: no rank may tear down gloo while a peer still talks to it
    finally:
        dist.destroy_process_group()


def test_parallel_info_validation_and_layer_split() -> None:
    with pytest.raises(ValueError):
        ParallelInfo(tp_rank=2, tp_size=2)
    with pytest.raises(ValueError):
        ParallelInfo(pp_size=0)
    assert [pp_layer_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert ParallelInfo(pp_rank=1, pp_size=2).layer_range(2) == (1, 2)
    with pytest.raises(ValueError):
        pp_layer_range(1, 0, 2)


def test_tensor_parallel_matches_single_rank(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    paths = [make_tiny_model(tmp_path / name, arch=preset, seed=1, **overrides)
             for name, (preset, overrides) in TP_CASES.items()]
    out = tmp_path / "tp.pt"
    mp.spawn(_tp_worker, args=([str(p) for p in paths], str(tmp_path / "store"), str(out)),
             nprocs=2, join=True)
    results = torch.load(out, weights_only=True)
    for name, path, got in zip(TP_CASES, paths, results, strict=True):
        expected = _run(path, ParallelInfo())
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0, msg=name)


@pytest.mark.parametrize("preset", ["llama", "opt", "gpt2"])
@torch.no_grad()
def test_pipeline_stages_match_single_stage(tmp_path: Path, preset: str) -> None:
    path = make_tiny_model(tmp_path / preset, arch=preset, seed=2, tie_word_embeddings=True)
    cfg = json.loads((path / "config.json").read_text())
    stages = [ParallelInfo(pp_rank=r, pp_size=2) for r in range(2)]
    models = [build_model(cfg, dtype=torch.float32, device="cpu", parallel=p) for p in stages]
    for model in models:
        load_weights(model, path)
    runners = [PagedRunner(m, cfg, parallel=p) for m, p in zip(models, stages, strict=True)]
    logits = []
    for prefills, decodes in [([(0, PROMPTS[0]), (1, PROMPTS[1])], []), ([], [(0, 5), (1, 6)])]:
        batches = [r.prepare(prefills, decodes) for r in runners]
        ids, positions, meta = batches[0]
        with forward_batch(meta, runners[0].kv_caches):
            hidden = models[0](ids, positions)
        with forward_batch(batches[1][2], runners[1].kv_caches):
            logits.append(models[1].compute_logits(models[1](ids, positions, hidden)))
    assert len(runners[1].kv_caches) == 1
    expected = _run(path, ParallelInfo())
    torch.testing.assert_close(torch.cat(logits), expected, atol=1e-5, rtol=0)
