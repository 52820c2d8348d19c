"""Entry points: the `distllm` CLI (and, later, the HTTP server)."""
from __future__ import annotations

__all__: list[str] = []
