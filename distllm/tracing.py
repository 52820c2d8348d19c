"""Step trace: opt-in timestamps of every engine step and KV migration, for finding where served
time goes (`evaluation/step_trace_report.py` reads them).

    DISTLLM_STEP_TRACE=DIR distllm serve ...      (Ray workers inherit it from the driver)

Each process appends JSON lines to DIR/<role>-<pid>.jsonl, `[monotonic s, event, fields...]`
(CLOCK_MONOTONIC is one clock for every process of a host):
    driver:  ["submit", instance, seq, num_prefills, num_decodes]   a step sent to a worker
             ["mig_start", request_id, src, dst]  ["mig_end", request_id]
             ["route", request_id, instance, [load of each live entry instance]]  a new request
             queued there (the least loaded)
    worker:  ["step", instance, seq, recv, exec_end]   the step channel's step `seq` (0-based, the
             driver's channel numbering): read at `recv`, executed by `exec_end`
             ["kv", instance, request_id, begin]       a KV receive into this worker, ending now
Events are buffered and written every FLUSH_EVERY events and at exit, so a killed process loses
its last few. Off (no file, one attribute test per event) unless the variable is set.
"""
from __future__ import annotations

import atexit
import json
import os
import threading
import time
from typing import Any

FLUSH_EVERY = 64


class StepTrace:
    """The process's trace writer; `enabled` False: every call returns at once."""

    def __init__(self, directory: str | None, role: str) -> None:
        self.directory, self.role = directory, role
        self.enabled = bool(directory)
        self._events: list[list[Any]] = []
        self._lock = threading.Lock()  # NOTE: a worker's step and migrate threads both record
        if self.enabled:
            os.makedirs(directory, exist_ok=True)  # type: ignore[arg-type]
            atexit.register(self.flush)

    @property
    def path(self) -> str:
        return os.path.join(self.directory or "", f"{self.role}-{os.getpid()}.jsonl")

    def event(self, *fields: Any, at: float | None = None) -> None:
        """Record an event now (or at `at`, a time.monotonic() reading)."""
        if not self.enabled:
            return
        with self._lock:
            self._events.append([time.monotonic() if at is None else at, *fields])
            full = len(self._events) >= FLUSH_EVERY
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            events, self._events = self._events, []
        if events:
            with open(self.path, "a") as f:
                f.write("".join(json.dumps(e) + "\n" for e in events))


_traces: dict[str, StepTrace] = {}


def step_trace(role: str) -> StepTrace:
    """This process's trace for `role` ("driver" or "worker"), from DISTLLM_STEP_TRACE."""
    trace = _traces.get(role)
    if trace is None:
        from distllm import envs

        trace = _traces[role] = StepTrace(envs.step_trace_dir(), role)
    return trace


def read_trace(directory: str) -> dict[str, list[list[Any]]]:
    """Every file of a trace directory: {file name: its events in order}."""
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".jsonl"):
            with open(os.path.join(directory, name)) as f:
                out[name] = [json.loads(line) for line in f if line.strip()]
    return out
