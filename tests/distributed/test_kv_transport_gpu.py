"""KV migration on GPUs (`gpu` marker, skipped without CUDA): 1P+1D over NCCL on two GPUs and
over CUDA IPC on one (spawned ranks running `process_groups.build_transport`), and the Ray engine
on two GPUs picking NCCL by itself (auto) with outputs equal to the in-process engine."""
from __future__ import annotations

import random

import pytest
import torch

from distllm.distributed.transport_select import WorkerLocation, plan_transports
from tests.distributed.kv_world import KVWorld, run_world

pytestmark = pytest.mark.gpu


def _two_gpus() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")


def test_1p1d_migration_over_nccl_on_two_gpus() -> None:
    _two_gpus()
    gpus = [WorkerLocation("node", "cuda", "GPU-0"), WorkerLocation("node", "cuda", "GPU-1")]
    plan = plan_transports([(0, 1)], gpus)
    assert plan.nccl_pairs == ((0, 1),)
    out = run_world(KVWorld(plan=plan, devices=("cuda:0", "cuda:1"), prefill_tp=1,
                            decode_tp=1, pair_backend="nccl"))
    assert all("error" not in o for o in out.values()), out
    assert out[0]["routes"] == {1: "nccl"} and out[1]["routes"] == {0: "nccl"}
    assert out[1]["ok"]


def test_1p1d_migration_over_cuda_ipc_on_one_gpu() -> None:
    same = WorkerLocation("node", "cuda", "GPU-0")
    plan = plan_transports([(0, 1)], [same, same])
    assert plan.routes == (((0, 1), "cuda_ipc"),) and plan.nccl_pairs == ()
    out = run_world(KVWorld(plan=plan, devices=("cuda:0", "cuda:0"), prefill_tp=1,
                            decode_tp=1, pair_backend="nccl"))
    assert all("error" not in o for o in out.values()), out
    assert out[0]["routes"] == {1: "cuda_ipc"} and out[1]["routes"] == {0: "cuda_ipc"}
    assert out[1]["ok"]


@pytest.mark.slow
def test_ray_engine_on_two_gpus_moves_kv_over_nccl(tmp_path_factory: pytest.TempPathFactory
                                                   ) -> None:
    import ray

    from distllm import LLM, SamplingParams
    from distllm.testing import make_tiny_model

    _two_gpus()
    model = str(make_tiny_model(tmp_path_factory.mktemp("llama"), arch="llama", seed=0))
    rng = random.Random(0)
    prompts = [[rng.randrange(10, 512) for _ in range(n)] for n in (5, 17, 40, 9)]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    engine = dict(device="cuda", dtype="float32", block_size=16, max_num_seqs=4,
                  max_model_len=256, max_num_batched_tokens=1024)
    local = LLM(model, **engine, gpu_memory_utilization=0.3)
    want = [o.token_ids for o in local.generate(prompts, params, use_tqdm=False)]
    del local
    torch.cuda.empty_cache()
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # NOTE: 0.6 of a GPU each: Ray cannot put both instances on one GPU
        llm = LLM(model, **engine, mode="disaggregated", gpu_memory_utilization=0.6)
        try:
            prefill = llm.engine.prefill[0].ray.workers[0]
            name = ray.get(prefill.__ray_call__.remote(
                lambda self: type(self.transport.fallback.routes.get(
                    1, self.transport.fallback.default)).__name__))
            assert name == "NcclTransport"
            got = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
            assert got == want
        finally:
            llm.shutdown()
    finally:
        if started:
            ray.shutdown()
