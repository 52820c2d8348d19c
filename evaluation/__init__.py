"""Evaluation: the serving load generator (`benchmark_serving`), its backends and analysis."""

from __future__ import annotations

__all__ = ["benchmark_serving"]
