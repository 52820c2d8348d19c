"""distllm: disaggregated prefill/decode LLM serving. Heavy names load lazily (PEP 562)."""
from __future__ import annotations

__all__ = ["LLM", "SamplingParams", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202 - PEP 562 hook
    if name == "LLM":
        from distllm.engine.llm import LLM
        return LLM
    if name == "SamplingParams":
        from distllm.sampling_params import SamplingParams
        return SamplingParams
    raise AttributeError(f"module 'distllm' has no attribute {name!r}")
