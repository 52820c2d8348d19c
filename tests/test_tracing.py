"""distllm.tracing: off without DISTLLM_STEP_TRACE; with it, events buffered and written as
JSON lines (every FLUSH_EVERY events, on flush, per process and role)."""
from __future__ import annotations

from pathlib import Path

import pytest

from distllm import tracing


def test_off_without_a_directory_writes_nothing(tmp_path: Path) -> None:
    trace = tracing.StepTrace(None, "worker")
    assert not trace.enabled
    trace.event("step", "x", 0, 1.0, 2.0)
    trace.flush()
    assert not list(tmp_path.iterdir())


def test_events_are_buffered_then_written_in_order(tmp_path: Path) -> None:
    trace = tracing.StepTrace(str(tmp_path / "t"), "driver")
    trace.event("submit", "decode-0", 0, 0, 3, at=5.0)
    assert not Path(trace.path).exists()  # buffered
    for i in range(tracing.FLUSH_EVERY - 1):
        trace.event("mig_end", f"r{i}")
    events = tracing.read_trace(str(tmp_path / "t"))
    assert list(events) == [Path(trace.path).name] and Path(trace.path).name.startswith("driver-")
    got = events[Path(trace.path).name]
    assert len(got) == tracing.FLUSH_EVERY and got[0] == [5.0, "submit", "decode-0", 0, 0, 3]
    assert got[1][1:] == ["mig_end", "r0"] and got[1][0] > 0
    trace.event("mig_end", "last")
    trace.flush()
    assert tracing.read_trace(str(tmp_path / "t"))[Path(trace.path).name][-1][1:] == [
        "mig_end", "last"]


def test_step_trace_follows_the_environment(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_traces", {})
    monkeypatch.delenv("DISTLLM_STEP_TRACE", raising=False)
    assert not tracing.step_trace("worker").enabled
    monkeypatch.setattr(tracing, "_traces", {})
    monkeypatch.setenv("DISTLLM_STEP_TRACE", str(tmp_path))
    trace = tracing.step_trace("worker")
    assert trace.enabled and trace is tracing.step_trace("worker")
    assert tracing.step_trace("driver") is not trace
