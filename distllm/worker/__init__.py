"""Data plane, one worker per device: KV cache tensors, model runner, worker."""
from __future__ import annotations

from distllm.worker.cache_engine import CacheEngine
from distllm.worker.model_runner import ModelRunner
from distllm.worker.worker import Worker

__all__ = ["CacheEngine", "ModelRunner", "Worker"]
