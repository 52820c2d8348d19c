"""The CUDA device path pieces that run on CPU: cache sizing from (mocked) GPU memory, config
knobs, decode CUDA-graph buckets and padding, KV transport selection."""
from __future__ import annotations

import argparse

import pytest
import torch

from distllm.config import CacheConfig, EngineConfig
from distllm.distributed.transport_select import WorkerLocation, choose_transport, is_same_gpu
from distllm.layers.context import AttentionMetadata
from distllm.worker import gpu_memory
from distllm.worker.cuda_graph import CudaGraphModel, DecodeBuffers, capture_sizes, padded_size

GIB = 2**30


def test_cache_config_defaults_and_validation() -> None:
    cache = CacheConfig()
    assert cache.is_sized_by_gpu_memory and cache.gpu_memory_utilization == 0.9
    assert cache.num_device_blocks(block_bytes=2**20) == 1024  # CPU default: 1 GiB
    assert not CacheConfig(kv_cache_memory_gb=2.0).is_sized_by_gpu_memory
    assert not CacheConfig(num_kv_blocks=3).is_sized_by_gpu_memory
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="gpu_memory_utilization"):
            CacheConfig(gpu_memory_utilization=bad)


def test_engine_config_flags(tiny_llama) -> None:
    config = EngineConfig.from_kwargs(str(tiny_llama), device="cuda", enforce_eager=True,
                                      gpu_memory_utilization=0.45)
    assert config.enforce_eager and config.cache.gpu_memory_utilization == 0.45
    parser = argparse.ArgumentParser()
    EngineConfig.add_cli_args(parser)
    ns = parser.parse_args(["--model", str(tiny_llama), "--device", "cuda", "--enforce-eager",
                            "--gpu-memory-utilization", "0.4"])
    parsed = EngineConfig.from_cli_args(ns)
    assert parsed.device == "cuda" and parsed.enforce_eager
    assert parsed.cache.gpu_memory_utilization == 0.4 and parsed.cache.is_sized_by_gpu_memory


def test_kv_budget_is_the_share_left_after_weights_and_activations() -> None:
    budget = gpu_memory.kv_cache_budget_bytes(
        total_bytes=80 * GIB, free_bytes=70 * GIB, used_by_self_bytes=10 * GIB,
        activation_bytes=2 * GIB, utilization=0.9)
    assert budget == int(80 * GIB * 0.9) - 12 * GIB


def test_kv_budget_capped_by_free_memory_when_sharing_a_gpu() -> None:
    # the other instance already holds 40 GiB: this one's 0.9 share must not count on it
    budget = gpu_memory.kv_cache_budget_bytes(80 * GIB, 30 * GIB, 5 * GIB, 1 * GIB, 0.9)
    assert budget == 29 * GIB - gpu_memory.HEADROOM_BYTES
    assert gpu_memory.kv_cache_budget_bytes(80 * GIB, 1 * GIB, 70 * GIB, GIB, 0.5) == 0


def test_cuda_kv_cache_bytes_reads_mem_get_info(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 16 * GIB)
    got = gpu_memory.cuda_kv_cache_bytes(torch.device("cuda"), 0.5, 1 * GIB)
    assert got == 40 * GIB - 17 * GIB
    with pytest.raises(RuntimeError, match="gpu-memory-utilization"):
        gpu_memory.cuda_kv_cache_bytes(torch.device("cuda"), 0.2, 1 * GIB)


def test_activation_estimate_grows_with_the_token_budget(tiny_llama) -> None:
    dims = EngineConfig.from_kwargs(str(tiny_llama)).model.dims
    small = gpu_memory.activation_peak_bytes(dims, 512, 8, 2)
    assert gpu_memory.activation_peak_bytes(dims, 4096, 8, 2) > small > 0


def test_capture_sizes_and_padding() -> None:
    assert capture_sizes(1) == [1]
    assert capture_sizes(6) == [1, 2, 4, 6]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    sizes = capture_sizes(64)
    assert sizes[-1] == 64 and all(s % 8 == 0 for s in sizes[3:])
    assert [padded_size(n, sizes) for n in (1, 3, 5, 9, 64)] == [1, 4, 8, 16, 64]
    assert padded_size(65, sizes) is None


def _decode_meta(n: int, width: int) -> AttentionMetadata:
    return AttentionMetadata(
        num_prefills=0, num_prefill_tokens=0, num_decode_tokens=n,
        slot_mapping=torch.arange(n, dtype=torch.int64) + 100,
        decode_block_tables=torch.full((n, width), 7, dtype=torch.int32),
        decode_context_lens=torch.full((n,), 33, dtype=torch.int32))


def test_decode_buffers_fill_pads_with_harmless_rows() -> None:
    buffers = DecodeBuffers.allocate(8, 4, torch.device("cpu"))
    buffers.block_tables.fill_(9)  # stale rows from a previous, larger batch
    buffers.fill(torch.tensor([5, 6, 7]), torch.tensor([32, 32, 32]), _decode_meta(3, 2), 4)
    assert buffers.input_ids[:4].tolist() == [5, 6, 7, 0]
    assert buffers.slot_mapping[:4].tolist() == [100, 101, 102, -1]
    assert buffers.block_tables[:4].tolist() == [[7, 7, 0, 0]] * 3 + [[0, 0, 0, 0]]
    assert buffers.context_lens[:4].tolist() == [33, 33, 33, 1]
    meta = buffers.metadata(4)
    assert meta.num_decode_tokens == 4 and meta.decode_block_tables.shape == (4, 4)


def test_graph_used_only_for_pure_decode_batches_that_fit() -> None:
    runner = CudaGraphModel.__new__(CudaGraphModel)  # NOTE: no capture on CPU
    runner.sizes = [1, 2, 4, 8]
    runner.buffers = DecodeBuffers.allocate(8, 4, torch.device("cpu"))
    assert runner.graph_size_for(_decode_meta(3, 4), 3) == 4
    assert runner.graph_size_for(_decode_meta(9, 4), 9) is None  # larger than every bucket
    assert runner.graph_size_for(_decode_meta(3, 5), 3) is None  # block table too wide
    assert runner.graph_size_for(None, 3) is None
    mixed = _decode_meta(2, 4)
    mixed.num_prefills, mixed.num_prefill_tokens = 1, 5
    assert runner.graph_size_for(mixed, 7) is None


def test_cpu_worker_runs_eagerly(tiny_llama) -> None:
    from distllm.worker.worker import Worker

    worker = Worker(EngineConfig.from_kwargs(str(tiny_llama), num_kv_blocks=8))
    worker.init_cache(*worker.determine_num_blocks())
    assert not worker.wants_cuda_graphs and not worker.uses_cuda_graphs
    assert worker.determine_num_blocks()[0] == 8


def test_transport_selection() -> None:
    cpu_a, cpu_b = WorkerLocation("n0", "cpu"), WorkerLocation("n1", "cpu")
    gpu0, gpu0_again = WorkerLocation("n0", "cuda", "GPU-a"), WorkerLocation("n0", "cuda", "GPU-a")
    gpu1, remote = WorkerLocation("n0", "cuda", "GPU-b"), WorkerLocation("n1", "cuda", "GPU-a")
    assert choose_transport(cpu_a, cpu_b) == "gloo"
    assert choose_transport(gpu0, gpu0_again) == "cuda_ipc" and is_same_gpu(gpu0, gpu0_again)
    assert choose_transport(gpu0, gpu1) == "nccl" and not is_same_gpu(gpu0, gpu1)
    assert choose_transport(gpu0, remote) == "nccl"
    assert not is_same_gpu(WorkerLocation("n0", "cuda"), WorkerLocation("n0", "cuda"))
    with pytest.raises(ValueError, match="same device kind"):
        choose_transport(cpu_a, gpu0)


def test_ray_gpu_share_lets_two_instances_share_one_gpu(tiny_llama) -> None:
    from distllm.engine.ray_cluster import gpu_share

    half = EngineConfig.from_kwargs(str(tiny_llama), device="cuda", gpu_memory_utilization=0.45)
    assert gpu_share(half) == 0.45 and 2 * gpu_share(half) <= 1.0
    assert gpu_share(EngineConfig.from_kwargs(str(tiny_llama))) == 0.0  # CPU: no GPU


def test_capture_only_with_the_native_cuda_kernels() -> None:
    from distllm.worker.cuda_graph import can_capture

    assert can_capture(torch.bfloat16, 128, 16, has_cuda_kernels=True)
    assert not can_capture(torch.float32, 128, 16, has_cuda_kernels=True)  # torch reference
    assert not can_capture(torch.bfloat16, 96, 16, has_cuda_kernels=True)
    assert not can_capture(torch.float16, 64, 16, has_cuda_kernels=False)


def test_padded_decode_batch_equals_the_unpadded_one(tiny_llama) -> None:
    """What a captured graph computes, run eagerly on CPU: the first n rows of a bucket padded
    by DecodeBuffers equal the unpadded batch, and padding rows write nothing to the cache."""
    from distllm.layers.context import forward_batch
    from distllm.worker.worker import Worker

    worker = Worker(EngineConfig.from_kwargs(str(tiny_llama), num_kv_blocks=8, block_size=16))
    worker.init_cache(8, 0)
    gen = torch.Generator().manual_seed(0)
    for k, v in worker.cache_engine.device_caches:
        k.copy_(torch.randn(k.shape, generator=gen))
        v.copy_(torch.randn(v.shape, generator=gen))
    initial = [(k.clone(), v.clone()) for k, v in worker.cache_engine.device_caches]
    meta = AttentionMetadata(
        num_prefills=0, num_prefill_tokens=0, num_decode_tokens=3,
        slot_mapping=torch.tensor([16 * 1 + 5, 16 * 3 + 0, 16 * 6 + 9]),
        decode_block_tables=torch.tensor([[2, 1], [5, 3], [6, 0]], dtype=torch.int32),
        decode_context_lens=torch.tensor([22, 17, 10], dtype=torch.int32))
    ids, pos = torch.tensor([11, 12, 13]), torch.tensor([21, 16, 9])
    with torch.inference_mode():
        with forward_batch(meta, worker.cache_engine.device_caches):
            want = worker.model(ids, pos)
        after = [(k.clone(), v.clone()) for k, v in worker.cache_engine.device_caches]
        for (k, v), (k0, v0) in zip(worker.cache_engine.device_caches, initial, strict=True):
            k.copy_(k0)
            v.copy_(v0)
        buffers = DecodeBuffers.allocate(8, 4, torch.device("cpu"))
        buffers.fill(ids, pos, meta, 4)
        with forward_batch(buffers.metadata(4), worker.cache_engine.device_caches):
            got = worker.model(buffers.input_ids[:4], buffers.positions[:4])
    torch.testing.assert_close(got[:3], want, rtol=1e-5, atol=1e-5)
    written = torch.zeros(8 * 16, dtype=torch.bool)
    written[meta.slot_mapping] = True
    written = written.view(8, 1, 16, 1)  # [num_blocks, 1, block_size, 1]
    for (k, v), (k1, v1), (k0, _) in zip(worker.cache_engine.device_caches, after, initial,
                                         strict=True):
        torch.testing.assert_close((k, v), (k1, v1), rtol=1e-5, atol=1e-5)
        assert torch.equal(torch.where(written, 0.0, k), torch.where(written, 0.0, k0))
