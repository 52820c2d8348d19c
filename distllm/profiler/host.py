"""CPU seconds of a serving process tree, split into step workers and the frontend.

`distllm serve` started with `start_new_session=True` leads a session: the API server (HTTP,
token streaming, detokenization, the engine driver) plus Ray's daemons and workers. Workers run
the model steps that `distllm profile` times; everything else in the session is the frontend,
whose CPU load competes with the workers for the host's cores and grows with the token rate.
`host_section()` turns the CPU spent over a benchmark round into simdist's `host` profile
section: the frontend's CPU ms per engine step (steps counted by replaying the round's trace in
simdist), the load generator's per streamed token, and the host's other load (cores busy outside
the tree). Linux only (/proc); elsewhere the snapshots are empty.
"""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

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


def _stat(pid: int) -> tuple[int, int, float] | None:
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
            if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
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
    return CpuSnapshot(procs, ru.ru_utime + ru.ru_stime, _host_busy_s(), time.monotonic())


def _host_busy_s() -> float:
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
