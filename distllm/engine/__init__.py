"""Orchestration: the stage engine and the offline `LLM` API."""
