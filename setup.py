"""Build and install distllm; the native ops (distllm._C) are built by CMake from CMakeLists.txt.

DISTLLM_TARGET_DEVICE=cpu|cuda|empty picks the kernels (default: cuda when torch has CUDA and
nvcc exists, else cpu); `empty` builds no extension and distllm.ops uses the torch references.
The CMake build directory (build/cmake-<python>-<target>) persists between installs, so a second
`pip install --no-build-isolation -e .` with unchanged sources only re-runs a no-op ninja.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _target_device() -> str:
    # NOTE: read here directly (not via distllm.envs): setup.py must not import the package.
    target = os.environ.get("DISTLLM_TARGET_DEVICE", "").strip().lower()
    if target in ("cpu", "cuda", "empty"):
        return target
    if target:
        raise ValueError(f"DISTLLM_TARGET_DEVICE must be cpu, cuda or empty, not {target!r}")
    try:
        import torch
    except ImportError:
        return "empty"
    has_nvcc = shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()
    return "cuda" if torch.version.cuda and has_nvcc else "cpu"


class CMakeExtension(Extension):
    """An extension whose sources are built by the CMake project in `cmake_lists_dir`."""

    def __init__(self, name: str, cmake_lists_dir: str = ".") -> None:
        super().__init__(name, sources=[], py_limited_api=False)
        self.cmake_lists_dir = str(Path(cmake_lists_dir).resolve())


class cmake_build_ext(build_ext):  # noqa: N801 - setuptools command naming
    """Configure (once per build directory) and build the CMake project, then copy the .so."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            super().build_extension(ext)
            return
        target = _target_device()
        py = f"py{sys.version_info.major}{sys.version_info.minor}"
        build_dir = ROOT / "build" / f"cmake-{py}-{target}"
        build_dir.mkdir(parents=True, exist_ok=True)
        self._configure(ext, build_dir, target)
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.check_call(["cmake", "--build", ".", "-j", jobs], cwd=build_dir)
        built = build_dir / "lib" / Path(self.get_ext_filename(ext.name)).name
        dest = Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists() or dest.read_bytes() != built.read_bytes():
            shutil.copyfile(built, dest)

    def _configure(self, ext: CMakeExtension, build_dir: Path, target: str) -> None:
        import torch.utils

        args = [
            f"-DCMAKE_BUILD_TYPE={os.environ.get('CMAKE_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DDISTLLM_TARGET_DEVICE={target}",
            f"-DDISTLLM_EXT_SUFFIX={self.get_ext_filename('x')[1:]}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build_dir / 'lib'}",
        ]
        if shutil.which("ninja"):
            args.append("-GNinja")
        stamp = build_dir / ".configure-args"
        if (build_dir / "CMakeCache.txt").exists() and stamp.exists():
            if stamp.read_text() == "\n".join(args):
                return  # NOTE: the generated build re-runs CMake itself when CMakeLists changes
        subprocess.check_call(["cmake", ext.cmake_lists_dir, *args], cwd=build_dir)
        stamp.write_text("\n".join(args))


def _ext_modules() -> list[Extension]:
    return [] if _target_device() == "empty" else [CMakeExtension("distllm._C")]


setup(
    name="distllm",
    version="0.1.0",
    description="Disaggregated prefill/decode LLM serving with a simulator-driven planner",
    python_requires=">=3.11",
    packages=find_packages(
        include=[
            "distllm",
            "distllm.*",
            "simdist",
            "simdist.*",
            "evaluation",
            "evaluation.*",
            "dataset",
            "dataset.*",
        ]
    ),
    install_requires=[
        "torch>=2.4",
        "numpy",
        "scipy",
        "tqdm",
        "ray",
        "aiohttp",
        "fastapi",
        "uvicorn",
        "safetensors",
        "tokenizers",
        "prometheus-client",
        "matplotlib",
        "jinja2",  # chat templates from tokenizer_config.json
    ],
    # NOTE: simdist ships latency profiles as data; distllm.testing (tiny HF models for tests and
    # the demo) needs transformers, which is in the dev extra.
    package_data={"simdist": ["profiles/*.json", "README.md"]},
    extras_require={
        "dev": ["pytest", "transformers", "ruff", "openai", "schemathesis"],
        "gpu": ["cupy-cuda12x"],
    },
    entry_points={"console_scripts": ["distllm=distllm.entrypoints.cli:main"]},
    ext_modules=_ext_modules(),
    cmdclass={"build_ext": cmake_build_ext},
    zip_safe=False,
)
