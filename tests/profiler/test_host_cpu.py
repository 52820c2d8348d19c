"""distllm.profiler.host: CPU seconds of a process tree split into workers / frontend, this
process's own (load generator) and the host's other load; the host section's arithmetic."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distllm.profiler.host import (
    CpuSnapshot,
    cpu_delta,
    frontend_latency_ms,
    host_section,
    snapshot,
)

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def test_snapshot_counts_a_busy_child_in_its_session_as_frontend() -> None:
    # a session leader that spawns a busy grandchild: both belong to the tree
    code = ("import subprocess, sys\n"
            f"subprocess.run([sys.executable, '-c', {BURN.format(s=0.3)!r}])\n"
            "import time; time.sleep(5)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        before = snapshot(proc.pid)
        assert proc.pid in before.procs
        deadline_s = 20.0
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline_s:
            delta = cpu_delta(before, snapshot(proc.pid))
            if delta["frontend"] >= 0.2 or proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    # polled while the grandchild burns its 0.3 s (an exited process is no longer counted)
    assert delta["worker"] == 0.0
    assert delta["frontend"] >= 0.2
    assert delta["wall"] > 0 and delta["background"] >= 0.0


def test_cpu_delta_and_host_section_arithmetic() -> None:
    before = CpuSnapshot({1: ("frontend", 1.0), 2: ("worker", 5.0)}, self_s=0.5,
                         host_busy_s=100.0, wall_s=10.0)
    after = CpuSnapshot({1: ("frontend", 3.0), 2: ("worker", 9.0), 3: ("worker", 1.0)},
                        self_s=1.0, host_busy_s=110.0, wall_s=15.0)
    d = cpu_delta(before, after)
    assert d == pytest.approx({"worker": 5.0, "frontend": 2.0, "loadgen": 0.5,
                               "background": 2.5, "wall": 5.0})
    host = host_section(d, num_steps=1000, num_tokens=2500, cores=2)
    assert host["cores"] == 2
    assert host["frontend_cpu_ms_per_step"] == pytest.approx(2.0)
    assert host["frontend_cpu_ms_per_token"] == pytest.approx(0.2)
    assert host["background_cores"] == pytest.approx(0.5)
    assert host["measured"]["num_steps"] == 1000
    with pytest.raises(ValueError):
        host_section(d, num_steps=0, num_tokens=10)


def test_frontend_latency_is_send_to_engine_plus_prefill_end_to_first_token() -> None:
    def req(start: float, arrival: float, prefill_end: float, first: float) -> dict:
        return {"start_time": start, "token_timestamps": [first], "error": None,
                "lifecycle_events": [{"event_type": "arrival", "timestamp": arrival},
                                     {"event_type": "prefill_end", "timestamp": prefill_end}]}

    # client clock starts at 0, the engine's at 1000: the offsets cancel
    exp = {"requests": [req(0.0, 1000.003, 1000.050, 0.052),  # 3 + 2 ms
                        req(1.0, 1001.004, 1001.100, 1.103),  # 4 + 3 ms
                        req(2.0, 1002.010, 1002.020, 2.030)]}  # 10 + 10 ms
    assert frontend_latency_ms(exp) == pytest.approx(7.0)
    assert frontend_latency_ms({"requests": []}) == 0.0


def _exp(prefills: list[tuple[float, float]], decodes: list[tuple[float, float]],
         tokens: list[list[float]]) -> dict:
    """An .exp dict: request i prefills over prefills[i]; decodes[i] (or None) its decode
    span with token times tokens[i] (on the load generator's clock, 100 s behind)."""
    reqs = []
    for (pb, pe), dec, ts in zip(prefills, decodes, tokens, strict=True):
        ev = [("arrival", pb), ("prefill_begin", pb), ("prefill_end", pe)]
        if dec is not None:
            ev += [("decode_begin", dec[0]), ("decode_end", dec[1])]
        reqs.append({"prompt_len": 100, "output_len": len(ts), "start_time": pb - 100.0,
                     "token_timestamps": [t - 100.0 for t in ts],
                     "lifecycle_events": [{"event_type": k, "timestamp": t} for k, t in ev]})
    return {"requests": reqs}


def test_contention_stats_reads_the_slowdown_under_the_other_phase() -> None:
    """Request 0 decodes over [0, 10]; prefills inside it take 13 ms, those after it 10 ms
    (log contrast log 1.3). Its decode steps overlapping a prefill take 12 ms, others 10."""
    from distllm.profiler.host import contention_stats

    busy = [(1.0 + k, 1.013 + k) for k in range(4)]
    idle = [(20.0 + k, 20.010 + k) for k in range(4)]
    steps, t = [0.0, 0.01], 0.01
    while t < 9.9:
        hit = any(a < t + 0.01 and t < b for a, b in busy)
        t += 0.012 if hit else 0.010
        steps.append(t)
    exp = _exp([(-0.02, 0.0)] + busy + idle, [(0.0, steps[-1])] + [None] * 8,
               [steps] + [[pe] for _, pe in busy + idle])
    s = contention_stats(exp, lambda lens: 10.0)
    assert s["prefill"] == pytest.approx(np.log(1.3), abs=1e-6) and s["prefill_weight"] == 4
    assert s["decode"] == pytest.approx(np.log(1.2), abs=0.02) and s["decode_weight"] >= 4
    empty = contention_stats({"requests": []}, lambda lens: 10.0)
    assert empty["prefill_weight"] == empty["decode_weight"] == 0
