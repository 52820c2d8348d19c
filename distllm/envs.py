"""The one place that reads environment variables; every name carries the DISTLLM_ prefix."""
from __future__ import annotations

import os


def _get(name: str, default: str) -> str:
    return os.environ.get(name, default)


def target_device() -> str:
    """Which kernels the build targets: cpu | cuda | empty (empty = pure-torch references only)."""
    return _get("DISTLLM_TARGET_DEVICE", "").lower()


def disable_native() -> bool:
    """Force the pure-torch reference ops even when distllm._C is built (debugging, tests)."""
    return _get("DISTLLM_DISABLE_NATIVE", "0") == "1"


def num_threads() -> int:
    """Threads per CPU worker; 0 lets torch decide."""
    return int(_get("DISTLLM_NUM_THREADS", "0"))


def step_trace_dir() -> str | None:
    """Where processes write their step trace (distllm.tracing); unset or empty: no trace."""
    return _get("DISTLLM_STEP_TRACE", "") or None


def log_level() -> str:
    return _get("DISTLLM_LOG_LEVEL", "INFO").upper()
