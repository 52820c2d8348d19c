"""The CUDA kernels' own code, run on the CPU through csrc/cuda/emulate (no GPU needed).

csrc/cuda/emulate/entry.cc includes decode_attention.cu and cache_kernels.cu and is compiled with
g++ -DDISTLLM_EMULATE: blocks run one after another, a block's threads are fibers that switch at
__syncthreads and warp shuffles. This checks indexing, GQA head tiles, the online softmax, the
split + log-sum-exp merge, the decode plan and the byte movers against distllm/ops/reference.py.
It cannot check GPU-only behaviour (memory ordering, occupancy, speed): the gpu tests do.
Tolerance: tests/kernels/utils.py TOLERANCES (fp32 accumulation on both sides); prefill uses
PREFILL_TOLERANCES (the probabilities are rounded to fp16/bf16 before the P.V tensor-core mma, as in
FlashAttention-2).
"""

from __future__ import annotations

import ctypes
import subprocess

import pytest
import torch

from distllm.ops import reference
from tests.kernels.test_cuda_compile import ROOT, _cuda_include_flags, _cxx
from tests.kernels.utils import assert_close, make_decode_case, make_paged_kv

_P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if _cxx() is None:
        pytest.skip("no host C++ compiler")
    include = _cuda_include_flags() if _has_nvcc() else ["-I", "/usr/local/cuda/include"]
    lib = tmp_path_factory.mktemp("emu") / "libdistllm_emu.so"
    cmd = [
        _cxx(),
        "-std=c++20",
        "-O1",
        "-shared",
        "-fPIC",
        "-DDISTLLM_EMULATE",
        "-Wno-unknown-pragmas",
        "-I",
        str(ROOT / "csrc"),
        *include,
        str(ROOT / "csrc" / "cuda" / "emulate" / "entry.cc"),
        "-o",
        str(lib),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode and "No such file or directory" in res.stderr:
        pytest.skip(f"CUDA toolkit headers not found: {res.stderr.strip().splitlines()[0]}")
    assert res.returncode == 0, res.stderr[-4000:]
    dll = ctypes.CDLL(str(lib))
    dll.emu_paged_decode.argtypes = [_P] * 6 + [_I] * 6 + [ctypes.c_float] + [_I] * 3 + [_L] * 2
    dll.emu_reshape_and_cache.argtypes = [_P] * 5 + [_L] * 4 + [_I] * 4
    dll.emu_block_copy.argtypes = [_P] * 4 + [_L] * 6 + [_I] * 2
    dll.emu_prefill.argtypes = [_P] * 9 + [_I] * 7 + [ctypes.c_float, _I]
    return dll


def _has_nvcc() -> bool:
    from tests.kernels.test_cuda_compile import NVCC

    return NVCC is not None


def _decode(emu, query, kv, lens: torch.Tensor, splits: int, num_sms: int = 132) -> tuple:
    out = torch.full(
        (query.shape[0], query.shape[1], query.shape[2]), float("nan"), dtype=query.dtype
    )
    rc = emu.emu_paged_decode(
        out.data_ptr(),
        query.data_ptr(),
        kv.key_cache.data_ptr(),
        kv.value_cache.data_ptr(),
        kv.block_tables.data_ptr(),
        lens.data_ptr(),
        query.shape[0],
        query.shape[1],
        kv.key_cache.shape[1],
        query.shape[2],
        kv.key_cache.shape[2],
        kv.block_tables.shape[1],
        query.shape[2] ** -0.5,
        splits,
        num_sms,
        int(query.dtype == torch.bfloat16),
        query.stride(0),
        query.stride(1),
    )
    assert rc // 1000 == 0, f"launch error {rc // 1000}"
    return out, rc % 1000  # output, number of splits used


def _case(lens, head_dim, group, block_size, dtype, num_kv_heads=2, seed=0) -> tuple:
    query, kv, lens_t, scale = make_decode_case(
        lens, head_dim, num_kv_heads, group, block_size, dtype, seed
    )
    expected = reference.paged_decode_attention(
        query, kv.key_cache, kv.value_cache, kv.block_tables, lens_t, scale
    )
    return query, kv, lens_t, expected


@pytest.mark.parametrize(
    ("head_dim", "block_size", "group", "dtype"),
    [
        (64, 8, 1, torch.float16),
        (64, 16, 4, torch.bfloat16),
        (128, 16, 8, torch.float16),
        (128, 32, 4, torch.bfloat16),
        (256, 32, 2, torch.float16),
        (256, 8, 8, torch.bfloat16),
        (128, 8, 6, torch.bfloat16),  # a partial head tile (6 of 8)
        (128, 16, 12, torch.float16),  # two head tiles (8 + 4)
    ],
)
def test_emulated_decode_matches_reference(emu, head_dim, block_size, group, dtype) -> None:
    query, kv, lens, expected = _case([1, 19, 70], head_dim, group, block_size, dtype)
    for splits in (1, 3):  # no merge; forced splits + merge (some splits past short contexts)
        out, used = _decode(emu, query, kv, lens, splits)
        assert used == splits
        assert_close(out, expected)


def test_emulated_decode_planned_splits_and_empty_context(emu) -> None:
    query, kv, lens, expected = _case([700, 1500, 0], 64, 2, 16, torch.bfloat16, seed=1)
    out, used = _decode(emu, query, kv, lens, 0)
    assert used > 1  # the plan splits long contexts of a small batch
    assert_close(out[:2], expected[:2])
    assert torch.count_nonzero(out[2]) == 0  # an empty context writes zeros


def test_emulated_decode_strided_query(emu) -> None:
    query, kv, lens, expected = _case([9, 40], 64, 4, 16, torch.float16, seed=2)
    qkv = torch.zeros(2, 8 + 4, 64, dtype=torch.float16)
    qkv[:, :8] = query
    out, _ = _decode(emu, qkv[:, :8], kv, lens, 2)
    assert_close(out, expected)


@pytest.mark.parametrize(
    ("dtype", "head_dim", "strided"),
    [
        (torch.float16, 64, True),  # 16-byte path
        (torch.bfloat16, 64, False),
        (torch.float32, 64, True),
        (torch.float16, 6, True),  # 12-byte heads: 2-byte path
        (torch.uint8, 5, False),  # 5-byte heads: byte path
    ],
)
def test_emulated_reshape_and_cache(emu, dtype, head_dim, strided) -> None:
    gen = torch.Generator().manual_seed(3)
    num_tokens, kvh = 37, 4
    qkv = torch.randint(0, 100, (num_tokens, 8 + 2 * kvh, head_dim), generator=gen).to(dtype)
    key, value = qkv[:, 8 : 8 + kvh], qkv[:, 8 + kvh :]
    if not strided:
        key, value = key.contiguous(), value.contiguous()
    kc = torch.randint(0, 100, (20, kvh, 16, head_dim), generator=gen).to(dtype)
    vc = torch.randint(0, 100, kc.shape, generator=gen).to(dtype)
    slots = torch.randperm(20 * 16, generator=gen)[:num_tokens]
    slots[::5] = -1
    kr, vr = kc.clone(), vc.clone()
    e = key.element_size()
    rc = emu.emu_reshape_and_cache(
        key.data_ptr(),
        value.data_ptr(),
        kc.data_ptr(),
        vc.data_ptr(),
        slots.data_ptr(),
        key.stride(0) * e,
        key.stride(1) * e,
        value.stride(0) * e,
        value.stride(1) * e,
        num_tokens,
        kvh,
        16,
        head_dim * e,
    )
    reference.reshape_and_cache(key, value, kr, vr, slots)
    assert rc == 0 and torch.equal(kc, kr) and torch.equal(vc, vr)


def _ptrs(caches: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([c.data_ptr() for c in caches], dtype=torch.int64)


def test_emulated_copy_blocks(emu) -> None:
    gen = torch.Generator().manual_seed(4)
    caches = [torch.randn(20, 4, 16, 64, generator=gen).half() for _ in range(6)]
    expected = [c.clone() for c in caches]
    mapping = torch.tensor([[0, 7], [3, 4], [5, 19], [6, 8]], dtype=torch.int64)
    ptrs, nbytes = _ptrs(caches), 4 * 16 * 64 * 2
    rc = emu.emu_block_copy(
        ptrs.data_ptr(),
        ptrs.data_ptr(),
        mapping.data_ptr(),
        mapping.data_ptr() + 8,
        2,
        nbytes,
        nbytes,
        0,
        0,
        nbytes,
        4,
        6,
    )
    reference.copy_blocks(expected[:3], expected[3:], mapping)
    assert rc == 0 and all(torch.equal(a, b) for a, b in zip(caches, expected, strict=True))


def test_emulated_migrate_head_range(emu) -> None:
    gen = torch.Generator().manual_seed(5)
    src = [torch.randn(20, 4, 16, 64, generator=gen).bfloat16() for _ in range(6)]
    dst = [torch.randn(30, 2, 16, 64, generator=gen).bfloat16() for _ in range(6)]
    expected = [c.clone() for c in dst]
    sb, db = torch.tensor([3, 17, 4, 0, 11]), torch.tensor([29, 1, 2, 8, 5])
    sp, dp, head = _ptrs(src), _ptrs(dst), 16 * 64 * 2
    rc = emu.emu_block_copy(
        sp.data_ptr(),
        dp.data_ptr(),
        sb.data_ptr(),
        db.data_ptr(),
        1,
        4 * head,
        2 * head,
        2 * head,
        0,
        2 * head,
        5,
        6,
    )
    reference.migrate_blocks(src, expected, sb, db, (2, 4), 0)
    assert rc == 0 and all(torch.equal(a, b) for a, b in zip(dst, expected, strict=True))


PREFILL_TOLERANCES = {
    torch.float16: {"atol": 4e-3, "rtol": 4e-3},
    torch.bfloat16: {"atol": 2.5e-2, "rtol": 2.5e-2},
}


def prefill_case(new_lens, cached, head_dim, num_kv_heads, group, block_size, dtype, seed=0):
    """Inputs of a ragged prefill batch (cached: prefix lengths or None) and the reference."""
    gen = torch.Generator().manual_seed(seed)
    n, heads = sum(new_lens), num_kv_heads * group
    q = torch.randn(n, heads, head_dim, generator=gen).to(dtype)
    k = torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype)
    cu = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32)
    prefix = None
    if cached is not None:
        kv = make_paged_kv(
            [max(c, 1) for c in cached], num_kv_heads, block_size, head_dim, dtype, gen
        )
        prefix = (
            kv.key_cache,
            kv.value_cache,
            kv.block_tables,
            torch.tensor(cached, dtype=torch.int32),
        )
    expected = reference.prefill_attention(q, k, v, cu, head_dim**-0.5, *(prefix or ()))
    return q, k, v, cu, prefix, expected


@pytest.mark.parametrize(
    ("new_lens", "cached", "head_dim", "group", "dtype"),
    [
        ([5], None, 64, 1, torch.float16),
        ([70, 3, 130], None, 64, 2, torch.bfloat16),  # ragged, several 64-row tiles
        ([64, 65], None, 128, 4, torch.float16),  # tile boundaries
        ([20, 65, 1], [37, 0, 100], 128, 2, torch.bfloat16),  # chunked prefill, cached prefix
        ([9, 33], [5, 64], 64, 8, torch.float16),
    ],
)
def test_emulated_prefill_matches_reference(emu, new_lens, cached, head_dim, group, dtype) -> None:
    q, k, v, cu, prefix, expected = prefill_case(new_lens, cached, head_dim, 2, group, 16, dtype)
    out = torch.full_like(q, float("nan"))
    kc, vc, tables, num_cached = prefix or (None, None, None, None)
    rc = emu.emu_prefill(
        out.data_ptr(),
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        cu.data_ptr(),
        kc.data_ptr() if kc is not None else None,
        vc.data_ptr() if vc is not None else None,
        tables.data_ptr() if tables is not None else None,
        num_cached.data_ptr() if num_cached is not None else None,
        len(new_lens),
        q.shape[0],
        q.shape[1],
        k.shape[1],
        head_dim,
        16,
        tables.shape[1] if tables is not None else 0,
        head_dim**-0.5,
        int(dtype == torch.bfloat16),
    )
    assert rc == 0
    assert torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), expected.float(), **PREFILL_TOLERANCES[dtype])
