"""Compile-only checks of csrc/cuda without a GPU (part of `make test` wherever nvcc exists).

- every csrc/cuda/*.cu compiles with nvcc for sm_80 and sm_90 (-gencode), no torch headers;
- the torch-facing launchers (csrc/cuda/*.cpp) and torch_bindings.cpp with DISTLLM_WITH_CUDA
  pass a host-compiler syntax check against torch's headers (CUDA-torch headers: only when the
  installed torch ships c10/cuda);
- the host-side decode plan (decode_plan.h) is compiled with the host compiler and run.
Skips cleanly when nvcc (or a host C++ compiler) is absent. The compiles run two at a time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "csrc" / "cuda"
ARCHS = ("80", "90")


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for candidate in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if Path(candidate).exists():
            return candidate
    return None


def _cxx() -> str | None:
    return shutil.which("g++") or shutil.which("c++")


NVCC = _nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def _cuda_include_flags() -> list[str]:
    """nvcc's own -I/-isystem flags (the toolkit headers), as its dry run prints them."""
    res = subprocess.run(
        [NVCC, "--dryrun", "-x", "cu", "-E", "/dev/null"], capture_output=True, text=True
    )
    flags = []
    for line in (res.stdout + res.stderr).splitlines():
        match = re.search(r'(?:SYSTEM_)?INCLUDES="?(.*)$', line)
        if match:
            flags += [f.strip('"') for f in match.group(1).split() if f.strip('"')]
    return flags


def _run_all(cmds: list[list[str]]) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_run, cmds))
    failures = [f"{' '.join(cmd)}\n{res.stderr[-4000:]}" for cmd, res in results if res.returncode]
    assert not failures, "\n\n".join(failures)


def _run(cmd: list[str]) -> tuple[list[str], subprocess.CompletedProcess]:
    return cmd, subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _nvcc_cmds(out: Path) -> list[list[str]]:
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    return [
        [NVCC, "-c", "-O3", "-std=c++17", "-Werror=all-warnings", *gencode,
         "-I", str(ROOT / "csrc"), "-o", str(out / f"{src.stem}.o"), str(src)]
        for src in sorted(CUDA_DIR.glob("*.cu"))
    ]  # fmt: skip


def _torch_includes() -> list[str] | None:
    try:
        import torch
    except ImportError:
        return None
    base = Path(torch.__file__).resolve().parent / "include"
    if not (base / "c10" / "cuda" / "CUDAStream.h").exists():
        return None  # this torch ships no c10/cuda headers
    include = sysconfig.get_paths()["include"]
    return ["-I", str(base), "-I", str(base / "torch" / "csrc" / "api" / "include"), "-I", include]


def _launcher_cmd(out: Path, torch_includes: list[str]) -> list[str]:
    sources = [*sorted(CUDA_DIR.glob("*.cpp")), ROOT / "csrc" / "torch_bindings.cpp"]
    # NOTE: one unity translation unit parses torch's headers once (the dominant cost).
    unity = out / "unity.cpp"
    unity.write_text("".join(f'#include "{src}"\n' for src in sources))
    # NOTE: a CPU torch wheel lacks the generated cuda_cmake_macros.h; nothing in it is needed on
    # Linux, so the configure-file include is switched off.
    return [
        _cxx(), "-std=gnu++17", "-fsyntax-only", "-Wall", "-Werror=return-type",
        "-Wno-unused-function", "-DDISTLLM_WITH_CUDA", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        "-I", str(ROOT / "csrc"), *_cuda_include_flags(), *torch_includes, str(unity),
    ]  # fmt: skip


Jobs = list[tuple[list[str], subprocess.Popen]]


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Jobs]:
    """Starts every compile of this module at once (they overlap on the cores)."""
    out = tmp_path_factory.mktemp("cuda_build")
    cmds: dict[str, list[list[str]]] = {"kernels": [], "launchers": []}
    if NVCC is not None:
        cmds["kernels"] = _nvcc_cmds(out)
        torch_includes = _torch_includes()
        if _cxx() is not None and torch_includes is not None:
            cmds["launchers"] = [_launcher_cmd(out, torch_includes)]
    start = lambda c: (c, subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    jobs = {name: [start(c) for c in group] for name, group in cmds.items()}
    yield jobs
    for group in jobs.values():
        for _, proc in group:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def _assert_succeeded(jobs: Jobs) -> None:
    failures = []
    for cmd, proc in jobs:
        _, err = proc.communicate(timeout=300)
        if proc.returncode:
            failures.append(f"{' '.join(cmd)}\n{err.decode(errors='replace')[-4000:]}")
    assert not failures, "\n\n".join(failures)


@needs_nvcc
def test_cuda_kernels_compile_for_sm80_and_sm90(builds: dict[str, Jobs]) -> None:
    assert builds["kernels"], "csrc/cuda has no .cu files"
    _assert_succeeded(builds["kernels"])
    for cmd, _ in builds["kernels"]:
        assert Path(cmd[cmd.index("-o") + 1]).stat().st_size > 0


@needs_nvcc
def test_torch_launchers_syntax_check(builds: dict[str, Jobs]) -> None:
    if not builds["launchers"]:
        pytest.skip("no host C++ compiler or no c10/cuda headers in this torch")
    _assert_succeeded(builds["launchers"])


PLAN_TEST = r"""
#include <cassert>
#include <cstdio>
#include "cuda/decode_plan.h"
using namespace distllm::cuda;
int main() {
  for (int group : {1, 2, 3, 4, 5, 7, 8, 12, 16}) {
    for (int bs : {8, 16, 32}) {
      for (int ctx : {1, 7, 100, 2048, 65536, 131072}) {
        for (int seqs : {1, 4, 64, 512}) {
          for (int req : {0, 1, 3, 1000}) {
            DecodePlan p = plan_decode(seqs, 8, group, ctx, bs, 132, req);
            assert(p.heads_per_block >= 1 && p.heads_per_block <= kMaxHeadsPerBlock);
            assert((p.heads_per_block & (p.heads_per_block - 1)) == 0);
            assert(p.head_chunks * p.heads_per_block >= group);
            assert((p.head_chunks - 1) * p.heads_per_block < group);
            assert(p.num_splits >= 1 && p.num_splits <= kMaxSplits);
            assert(p.split_tokens % bs == 0 && p.split_tokens > 0);
            assert(p.num_splits * p.split_tokens >= ctx);           // covers the context
            assert((p.num_splits - 1) * p.split_tokens < ctx);      // no empty trailing split
            if (req == 1) assert(p.num_splits == 1);
            if (req == 0 && p.num_splits > 1)  // one wave of resident blocks at most
              assert(p.num_splits * seqs * 8 * p.head_chunks <=
                     blocks_per_sm(p.heads_per_block) * 132);
          }
        }
      }
    }
  }
  // Small batches split long contexts to fill the SMs; large batches do not split.
  assert(plan_decode(1, 8, 8, 65536, 16, 132, 0).num_splits >= 16);
  assert(plan_decode(512, 8, 8, 65536, 16, 132, 0).num_splits == 1);
  assert(plan_decode(1, 8, 8, 100, 16, 132, 0).num_splits == 1);   // < kMinSplitTokens
  std::puts("plan ok");
  return 0;
}
"""


@pytest.mark.skipif(_cxx() is None, reason="no host C++ compiler")
def test_decode_plan_invariants(tmp_path: Path) -> None:
    src, exe = tmp_path / "plan_test.cpp", tmp_path / "plan_test"
    src.write_text(PLAN_TEST)
    _run_all([[_cxx(), "-std=c++17", "-O1", "-I", str(ROOT / "csrc"), "-o", str(exe), str(src)]])
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "plan ok" in res.stdout, res.stderr


def test_cuda_sources_include_no_torch_headers() -> None:
    """The nvcc-compiled kernels stay torch-free (fast compiles, compile-checkable anywhere)."""
    for src in [*CUDA_DIR.glob("*.cu"), *CUDA_DIR.glob("*.cuh"), CUDA_DIR / "kernels.h"]:
        text = src.read_text()
        assert "torch/" not in text and "ATen/" not in text and "c10/" not in text, src.name
