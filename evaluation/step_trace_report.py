"""Where served time goes, from a step trace (distllm.tracing: `DISTLLM_STEP_TRACE=DIR distllm
serve ...`): per instance, its steps' duration by batch size, alone and while a KV migration
lands on it or another instance steps (the contrasts simdist.host's contention terms stand
for), how long its worker sat idle with requests to decode because the driver had not sent
the next step, and the migrations' time in flight against their receive on the decode worker.

    python evaluation/step_trace_report.py DIR [--json out.json]

Worker steps are matched to the driver's submissions by instance and step number (the step
channel's sequence; steps of Ray-task instances, pp > 1 or --worker-rpc ray, are not traced on
the worker).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH_BINS = ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 1 << 30))


def load(directory: str) -> dict:
    """The trace's events by kind: steps {instance: [(seq, recv, end, prefills, decodes)]},
    kv {instance: [(begin, end)]}, migrations [(start, end)]."""
    from distllm.tracing import read_trace

    submits, steps, kv, mig = {}, defaultdict(list), defaultdict(list), {}
    for events in read_trace(directory).values():
        for e in events:
            t, kind = e[0], e[1]
            if kind == "submit":
                submits[e[2], e[3]] = (e[4], e[5])
            elif kind == "step":
                steps[e[2]].append((e[3], e[4], e[5]))
            elif kind == "kv":
                kv[e[2]].append((e[4], t))
            elif kind == "mig_start":
                mig.setdefault(e[2], [None, None])[0] = t
            elif kind == "mig_end":
                mig.setdefault(e[2], [None, None])[1] = t
    out = {}
    for name, rows in steps.items():
        rows.sort()
        out[name] = [(seq, recv, end, *submits[name, seq]) for seq, recv, end in rows
                     if (name, seq) in submits]
    return {"steps": out, "kv": dict(kv),
            "migrations": [tuple(v) for v in mig.values() if None not in v],
            "submits": submits}


def _overlaps(a: float, b: float, spans: np.ndarray) -> bool:
    return bool(len(spans)) and bool(np.any((spans[:, 0] < b) & (spans[:, 1] > a)))


def _q(x: list[float]) -> dict:
    if not x:
        return {"n": 0}
    return {"n": len(x), "p50_ms": float(np.percentile(x, 50)),
            "p90_ms": float(np.percentile(x, 90))}


def _contrast(groups: dict) -> float | None:
    """Mean over batch bins (weighted by the smaller count) of median(with) / median(alone)."""
    num = den = 0.0
    for alone, other in groups.values():
        if len(alone) >= 3 and len(other) >= 3:
            w = min(len(alone), len(other))
            num += w * np.median(other) / np.median(alone)
            den += w
    return num / den if den else None


def analyze(trace: dict) -> dict:
    steps = trace["steps"]
    spans = {n: np.array([(r[1], r[2]) for r in rows]).reshape(-1, 2)
             for n, rows in steps.items()}
    report = {}
    for name, rows in steps.items():
        kv = np.array(trace["kv"].get(name, [])).reshape(-1, 2)
        others = [s for n, s in spans.items() if n != name]
        other = np.concatenate(others) if others else np.zeros((0, 2))
        by_bin: dict = defaultdict(lambda: {"alone": [], "kv": [], "other": []})
        kv_groups: dict = defaultdict(lambda: ([], []))
        other_groups: dict = defaultdict(lambda: ([], []))
        idle = []  # ms the worker waited between two steps of a running decode batch
        for i, (_, recv, end, prefills, decodes) in enumerate(rows):
            ms = 1e3 * (end - recv)
            if prefills == 0 and decodes > 0:
                b = next(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in BATCH_BINS
                         if lo <= decodes <= hi)
                with_kv, with_other = _overlaps(recv, end, kv), _overlaps(recv, end, other)
                key = "kv" if with_kv else "other" if with_other else "alone"
                by_bin[b][key].append(ms)
                if not with_other:
                    kv_groups[b][int(with_kv)].append(ms)
                if not with_kv:
                    other_groups[b][int(with_other)].append(ms)
            if i and rows[i - 1][0] == rows[i][0] - 1 and rows[i - 1][4] and decodes:
                # NOTE: a decode batch ran on: the worker waited for this step from its last
                idle.append(1e3 * max(recv - rows[i - 1][2], 0.0))
        span = rows[-1][2] - rows[0][1] if rows else 0.0
        busy = sum(r[2] - r[1] for r in rows)
        report[name] = {
            "steps": len(rows), "busy": busy / span if span > 0 else 0.0,
            "decode_ms_by_batch": {b: {k: _q(v) for k, v in d.items()}
                                   for b, d in sorted(by_bin.items(),
                                                      key=lambda kv_: int(kv_[0].split("-")[0]))},
            "kv_landing_ratio": _contrast(kv_groups),
            "other_stepping_ratio": _contrast(other_groups),
            "idle_between_decode_steps_s": sum(idle) / 1e3,
            "idle_gaps_over_1ms": int(sum(g > 1.0 for g in idle)),
            "kv_receives": len(kv), "kv_receive": _q(list(1e3 * (kv[:, 1] - kv[:, 0]))),
        }
    mig = np.array(trace["migrations"]).reshape(-1, 2)
    return {"instances": report, "migrations": _q(list(1e3 * (mig[:, 1] - mig[:, 0])))}


def format_report(rep: dict) -> str:
    lines = []
    for name, r in rep["instances"].items():
        ratio = lambda x: "-" if x is None else f"{x:.2f}x"  # noqa: E731
        lines.append(f"{name}: {r['steps']} steps, busy {r['busy']:.2f}; decode step vs alone: "
                     f"KV landing {ratio(r['kv_landing_ratio'])}, another instance stepping "
                     f"{ratio(r['other_stepping_ratio'])}; idle between decode steps "
                     f"{r['idle_between_decode_steps_s']:.3f} s ({r['idle_gaps_over_1ms']} gaps "
                     f"> 1 ms)")
        for b, d in r["decode_ms_by_batch"].items():
            cells = "  ".join(f"{k} {v['p50_ms']:.2f}/{v['p90_ms']:.2f} ms (n={v['n']})"
                              for k, v in d.items() if v["n"])
            lines.append(f"    batch {b:>5}: p50/p90 {cells}")
        if r["kv_receives"]:
            k = r["kv_receive"]
            lines.append(f"    KV receives {r['kv_receives']}: p50/p90 {k['p50_ms']:.2f}/"
                         f"{k['p90_ms']:.2f} ms on the worker")
    m = rep["migrations"]
    if m["n"]:
        lines.append(f"migrations {m['n']}: start to end p50/p90 {m['p50_ms']:.2f}/"
                     f"{m['p90_ms']:.2f} ms (driver)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace_dir", help="the DISTLLM_STEP_TRACE directory")
    p.add_argument("--json", default=None, help="also write the report here")
    ns = p.parse_args(argv)
    if not Path(ns.trace_dir).is_dir():
        p.error(f"trace_dir: {ns.trace_dir} is not a directory")
    rep = analyze(load(ns.trace_dir))
    if not rep["instances"]:
        p.error(f"trace_dir: no worker step events in {ns.trace_dir} (was DISTLLM_STEP_TRACE "
                "set when the server started?)")
    print(format_report(rep))
    if ns.json:
        Path(ns.json).write_text(json.dumps(rep, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
