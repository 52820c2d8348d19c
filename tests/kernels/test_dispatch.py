"""distllm.ops dispatch: native when built and supported, reference otherwise (always runs)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from distllm import ops
from distllm.ops import reference
from tests.kernels.utils import make_paged_kv


def _decode_inputs(dtype: torch.dtype) -> tuple:
    gen = torch.Generator().manual_seed(0)
    kv = make_paged_kv([3, 18], 2, 8, 64, dtype, gen)
    query = torch.randn(2, 4, 64, generator=gen).to(dtype)
    lens = torch.tensor([3, 18], dtype=torch.int32)
    return query, kv.key_cache, kv.value_cache, kv.block_tables, lens, 0.125


def test_public_signatures_match_reference() -> None:
    import inspect

    for name in (
        "reshape_and_cache",
        "paged_decode_attention",
        "prefill_attention",
        "copy_blocks",
        "swap_blocks",
    ):
        ours = inspect.signature(getattr(ops, name)).parameters
        theirs = inspect.signature(getattr(reference, name)).parameters
        assert list(ours) == list(theirs), name
        assert [p.default for p in ours.values()] == [p.default for p in theirs.values()]


def test_has_native_is_a_bool_and_isa_is_reported() -> None:
    assert isinstance(ops.HAS_NATIVE, bool)
    isa = ops.native_isa()
    assert (isa in ("base", "avx2", "avx512", "avx512bf16")) if ops.HAS_NATIVE else isa is None


def test_float64_falls_back_to_reference() -> None:
    args = _decode_inputs(torch.float64)
    out = ops.paged_decode_attention(*args)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference.paged_decode_attention(*args))


def test_reference_path_when_native_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "HAS_NATIVE", False)
    args = _decode_inputs(torch.float32)
    torch.testing.assert_close(
        ops.paged_decode_attention(*args), reference.paged_decode_attention(*args)
    )


def test_disable_native_env_var_forces_reference() -> None:
    code = "import distllm.ops as o; print(o.HAS_NATIVE, o.native_isa())"
    env = {**os.environ, "DISTLLM_DISABLE_NATIVE": "1"}
    res = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert res.stdout.split() == ["False", "None"]
