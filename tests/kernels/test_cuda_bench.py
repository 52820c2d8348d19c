"""evaluation/bench_kernels.py: the no-GPU exit, the shape table, and (gpu) one small run of
each measurement path."""

from __future__ import annotations

import pytest
import torch

from evaluation import bench_kernels as bk


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_exits_2_with_one_line_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    assert bk.main(["--output", "/nonexistent/never-written.json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "nothing measured" in lines[0]


def test_every_decode_shape_has_64k_context_tokens() -> None:
    for shape in bk.DECODE_SHAPES:
        assert shape.num_seqs * shape.context_len >= 65536, shape.name
        assert shape.head_dim in (64, 128, 256) and shape.block_size in (8, 16, 32)
    heads = {(s.head_dim, s.group) for s in bk.DECODE_SHAPES}
    assert {d for d, _ in heads} == {64, 128, 256} and {1, 8} <= {g for _, g in heads}


def test_kv_bytes_and_spec_lookup() -> None:
    shape = bk.DecodeShape("x", num_seqs=2, context_len=10, num_kv_heads=3, head_dim=64)
    assert shape.kv_bytes == 2 * 2 * 10 * 3 * 64 * 2  # K and V, bf16
    assert bk.spec_of("NVIDIA H100 80GB HBM3") == (3.35, 989.0)
    assert bk.spec_of("NVIDIA H200")[0] == 4.8
    assert bk.spec_of("NVIDIA H100 PCIe")[0] == 2.0
    assert bk.spec_of("Some GPU") == (None, None)
    with pytest.raises(ValueError, match="must be >= 1"):
        bk.DecodeShape("bad", num_seqs=0, context_len=1)


@pytest.mark.gpu
def test_small_run_of_every_path() -> None:
    from distllm import ops

    assert ops.HAS_CUDA_NATIVE, "distllm._C has no CUDA kernels"
    timer = bk.Timer(iters=2)
    ceil = {"copy_tbs": 1.0, "spec_tbs": None}
    row = bk.bench_decode(bk.DecodeShape("tiny", 3, 300, num_kv_heads=2), timer, ceil)
    assert row["max_abs_err_vs_sdpa"] < 2e-2 and row["time_us"] > 0
    assert bk.bench_append(64, timer, ceil)["bytes"] > 0
    assert bk.bench_migrate(8, (0, 4), timer, ceil, num_layers=2)["time_us"] > 0
    prefill = bk.bench_prefill([100, 30], (4, 2), 64, timer, {"matmul_bf16_tflops": 1.0})
    assert prefill["tflops"] > 0
