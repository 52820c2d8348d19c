"""Benchmark datasets: one `prepare_<source>.py` per source, all writing one JSONL schema."""

from __future__ import annotations

from dataset.common import DatasetRequest, load_tokenizer, read_dataset, write_dataset

__all__ = ["DatasetRequest", "load_tokenizer", "read_dataset", "write_dataset"]
