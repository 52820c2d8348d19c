"""CPU seconds of a serving process tree, split into step workers and the frontend.

`distllm serve` started with `start_new_session=True` leads a session: the API server (HTTP,
token streaming, detokenization, the engine driver) plus Ray's daemons and workers. Workers run
the model steps that `distllm profile` times; everything else in the session is the frontend,
whose CPU load competes with the workers for the host's cores and grows with the token rate.
`host_section()` turns the CPU spent over a benchmark round into simdist's `host` profile
section: the frontend's CPU ms per engine step (steps counted by replaying the round's trace in
simdist), the load generator's per streamed token, and the host's other load (cores busy outside
the tree). Linux only (/proc); elsewhere the snapshots are empty.

`contention_stats` reads the same slowdown the other way round, from a round's `.exp` (real or
simulated): how much longer prefills take while the decode side is busy than while it is idle,
and decode steps while a prefill runs than while none does (simdist.calibrate.fit_contention
matches the simulation's to the real one's).
"""
from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_PROC = Path("/proc")
# Ray actors running the model steps retitle themselves "ray::<ActorClass>" (RayWorker,
# FaultyRayWorker); Ray's agents and idle pooled workers ("ray::IDLE") count as frontend.
_WORKER_PREFIX, _WORKER_MARK = "ray::", "Worker"


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds at one instant: per pid (role, seconds) of the tree, plus this process's
    own (the load generator runs in it)."""

    procs: dict[int, tuple[str, float]]
    self_s: float
    host_busy_s: float  # every core's non-idle time (/proc/stat)
    wall_s: float


def proc_stat(pid: int) -> tuple[int, int, float] | None:
    """(ppid, session id, user+system CPU seconds) of a pid, None if it is gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), int(fields[3]), (int(fields[11]) + int(fields[12])) / ticks


def _role(pid: int) -> str:
    try:
        cmd = (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "frontend"
    title = cmd.split(" ", 1)[0]
    is_worker = title.startswith(_WORKER_PREFIX) and _WORKER_MARK in title
    return "worker" if is_worker else "frontend"


def snapshot(root_pid: int) -> CpuSnapshot:
    """CPU seconds of every process in root_pid's session or below it."""
    stats = {}
    if _PROC.is_dir():
        for entry in _PROC.iterdir():
            if entry.name.isdigit() and (st := proc_stat(int(entry.name))) is not None:
                stats[int(entry.name)] = st
    tree = {root_pid}
    grew = True
    while grew:  # descendants, plus anything left in the session after re-parenting
        new = {p for p, (ppid, sid, _) in stats.items()
               if p not in tree and (ppid in tree or sid == root_pid)}
        tree |= new
        grew = bool(new)
    procs = {p: (_role(p), stats[p][2]) for p in tree if p in stats}
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return CpuSnapshot(procs, ru.ru_utime + ru.ru_stime, host_busy_s(), time.monotonic())


def host_busy_s() -> float:
    """Non-idle CPU seconds of the whole host (user, nice, system, irq, softirq, steal)."""
    try:
        head = (_PROC / "stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    ticks = [int(x) for x in head[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds spent between two snapshots: `worker`, `frontend` (server side) and
    `loadgen` (this process). Processes that exited in between are not counted."""
    out = {"worker": 0.0, "frontend": 0.0, "loadgen": after.self_s - before.self_s}
    for pid, (role, sec) in after.procs.items():
        prev = before.procs.get(pid)
        out[role] += sec - (prev[1] if prev is not None else 0.0)
    ours = out["worker"] + out["frontend"] + out["loadgen"]
    out["background"] = max(0.0, after.host_busy_s - before.host_busy_s - ours)
    out["wall"] = after.wall_s - before.wall_s
    return out


def host_section(delta: dict[str, float], num_steps: int, num_tokens: int,
                 cores: int | None = None) -> dict:
    """simdist's `host` profile section from one round's CPU use (`cpu_delta`): the server's
    frontend CPU per engine step (`num_steps`: the round's steps, e.g. from replaying its trace
    in simdist), the load generator's per streamed output token, and the other load on the host
    in cores. The raw figures are kept under `measured`."""
    if num_steps <= 0 or num_tokens <= 0 or delta["wall"] <= 0:
        raise ValueError("host_section needs a round that ran steps and streamed tokens")
    return {"cores": int(cores or os.cpu_count() or 1),
            "frontend_cpu_ms_per_step": 1e3 * delta["frontend"] / num_steps,
            "frontend_cpu_ms_per_token": 1e3 * delta["loadgen"] / num_tokens,
            "frontend_cpu_ms_per_request": 0.0,
            "background_cores": delta["background"] / delta["wall"],
            "measured": {**{f"{k}_cpu_s": v for k, v in delta.items() if k != "wall"},
                         "wall_s": delta["wall"], "num_steps": num_steps,
                         "num_tokens": num_tokens}}


def frontend_latency_ms(exp: dict) -> float:
    """Median over a `.exp`'s finished requests of the time the frontend adds to TTFT: client
    send -> engine arrival plus engine prefill end -> client first token (the engine and the
    load generator share the host's monotonic clock; their offsets cancel in the sum)."""
    lat = []
    for q in exp["requests"]:
        ev = {e["event_type"]: e["timestamp"] for e in q.get("lifecycle_events") or []}
        ts = q.get("token_timestamps") or []
        if ts and "arrival" in ev and "prefill_end" in ev and not q.get("error"):
            lat.append((ev["arrival"] - q["start_time"]) + (ts[0] - ev["prefill_end"]))
    if not lat:
        return 0.0
    lat.sort()
    return 1e3 * max(0.0, lat[len(lat) // 2])


BUSY, IDLE = 0.7, 0.3  # share of a prefill overlapped by decode steps: busy above, idle below
MIN_GROUP = 3  # requests (steps) per side for a ratio to count


def _covered(a: float, b: float, spans: list[tuple[float, float]]) -> float:
    """Share of [a, b] covered by the union of spans (sorted by start)."""
    if b <= a:
        return 0.0
    tot, cur = 0.0, a
    for x, y in spans:
        if x >= b:
            break
        x, y = max(x, cur), min(y, b)
        if y > x:
            tot, cur = tot + y - x, y
    return tot / (b - a)


def _phases(exp: dict) -> list[tuple[dict, dict]]:
    out = []
    for q in exp["requests"]:
        ev = {e["event_type"]: e["timestamp"] for e in q.get("lifecycle_events") or []}
        if not q.get("error") and "prefill_begin" in ev and "prefill_end" in ev:
            out.append((q, ev))
    return out


def _log_ratio(pairs: list[tuple[list[float], list[float]]]) -> tuple[float, int]:
    """Weighted mean over groups of log(median busy / median idle); weight min(side sizes)."""
    logs, weights = [], []
    for busy, idle in pairs:
        if len(busy) >= MIN_GROUP and len(idle) >= MIN_GROUP:
            logs.append(np.log(np.median(busy) / np.median(idle)))
            weights.append(min(len(busy), len(idle)))
    if not weights:
        return 0.0, 0
    return float(np.average(logs, weights=weights)), int(sum(weights))


def contention_stats(exp: dict, prefill_ms: Callable[[list[int]], float]) -> dict:
    """Slowdowns of a round (`.exp` dict with lifecycle events and token times):
    `prefill`: log(median prefill / prefill_ms(batch prompt lens)) while decode steps ran for
    >= BUSY of it over the same while they ran for <= IDLE of it; `decode`: log(median decode
    step overlapping a prefill / one that did not), at equal decode batch size, averaged over
    batch sizes. `*_weight`: 0 where a side had too few requests (steps)."""
    ph = _phases(exp)
    dec = sorted((ev["decode_begin"], ev["decode_end"]) for _, ev in ph
                 if "decode_begin" in ev and "decode_end" in ev)
    pre = sorted((ev["prefill_begin"], ev["prefill_end"]) for _, ev in ph)
    batches: dict[float, list[int]] = {}
    for q, ev in ph:
        batches.setdefault(round(ev["prefill_begin"], 6), []).append(q["prompt_len"])
    busy, idle = [], []
    for _, ev in ph:
        a, b = ev["prefill_begin"], ev["prefill_end"]
        norm = (b - a) * 1e3 / max(prefill_ms(batches[round(a, 6)]), 1e-9)
        share = _covered(a, b, dec)
        (busy if share >= BUSY else idle if share <= IDLE else []).append(norm)
    p_log, p_w = _log_ratio([(busy, idle)])
    steps: dict[tuple[float, float], tuple[int, bool]] = {}
    # token times may be on the load generator's clock (from its start): moved onto the
    # engine's by the median send -> engine arrival offset
    shift = float(np.median([ev["arrival"] - q["start_time"] for q, ev in ph
                             if "arrival" in ev])) if ph else 0.0
    for q, _ in ph:
        ts = [t + shift for t in (q.get("token_timestamps") or [])[1:]]
        for t0, t1 in zip(ts, ts[1:], strict=False):
            mid = 0.5 * (t0 + t1)
            size = sum(x <= mid <= y for x, y in dec)
            steps[round(t0, 6), round(t1, 6)] = (size, _covered(t0, t1, pre) > 0)
    by_size: dict[int, tuple[list[float], list[float]]] = {}
    for (t0, t1), (size, hit) in steps.items():
        by_size.setdefault(size, ([], []))[0 if hit else 1].append(t1 - t0)
    d_log, d_w = _log_ratio(list(by_size.values()))
    return {"prefill": p_log, "prefill_weight": p_w, "decode": d_log, "decode_weight": d_w}
