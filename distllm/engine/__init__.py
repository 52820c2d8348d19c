"""Orchestration: the stage engine (`LLMEngine`), the offline `LLM` API and `RequestOutput`."""
from __future__ import annotations

from distllm.engine.llm import LLM
from distllm.engine.llm_engine import LLMEngine
from distllm.engine.outputs import RequestOutput

__all__ = ["LLM", "LLMEngine", "RequestOutput"]
