"""Where served time goes, from a step trace (distllm.tracing: `DISTLLM_STEP_TRACE=DIR distllm
serve ...`): per instance, the requests the driver routed to it, its steps' duration by batch
size, alone and while a KV migration lands on it or another instance steps (the contrasts
simdist.host's contention terms stand for), how long its worker sat idle with requests to
decode because the driver had not sent the next step, and the migrations' time in flight
against their receive on the decode worker. Then the host's noise as each instance sees it:
how far its single-request decode steps (the same work, up to the context) vary, how long a
slow or fast spell lasts (their correlation at time lags), and whether instances are slow at
the same moments or take turns (the correlation between instances' steps that start within
CROSS_LAG_S of each other).

    python evaluation/step_trace_report.py DIR [--json out.json]

Worker steps are matched to the driver's submissions by instance and step number (the step
channel's sequence; steps of Ray-task instances, pp > 1 or --worker-rpc ray, are not traced on
the worker).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH_BINS = ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 1 << 30))
LAG_BINS_MS = ((0, 5), (5, 20), (20, 50), (50, 150), (150, 500))  # speed autocorrelation
CROSS_LAG_S = 0.005  # steps of two instances this close in start time are compared
MIN_SPEED_STEPS = 20  # fewer single-request decode steps: no speed figures for an instance


def load(directory: str) -> dict:
    """The trace's events by kind: steps {instance: [(seq, recv, end, prefills, decodes)]},
    kv {instance: [(begin, end)]}, migrations [(start, end)], routes [(request_id, instance,
    loads of the entry instances)]."""
    from distllm.tracing import read_trace

    submits, steps, kv, mig, routes = {}, defaultdict(list), defaultdict(list), {}, []
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
            elif kind == "route":
                routes.append((e[2], e[3], e[4]))
    out = {}
    for name, rows in steps.items():
        rows.sort()
        out[name] = [(seq, recv, end, *submits[name, seq]) for seq, recv, end in rows
                     if (name, seq) in submits]
    return {"steps": out, "kv": dict(kv),
            "migrations": [tuple(v) for v in mig.values() if None not in v],
            "submits": submits, "routes": routes}


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
    kvs = {n: np.array(trace["kv"].get(n, [])).reshape(-1, 2) for n in steps}
    routed = Counter(instance for _, instance, _ in trace["routes"])
    report = {}
    for name, rows in steps.items():
        kv = kvs[name]
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
            "routed": routed[name],
            "decode_ms_by_batch": {b: {k: _q(v) for k, v in d.items()}
                                   for b, d in sorted(by_bin.items(),
                                                      key=lambda kv_: int(kv_[0].split("-")[0]))},
            "kv_landing_ratio": _contrast(kv_groups),
            "other_stepping_ratio": _contrast(other_groups),
            "idle_between_decode_steps_s": sum(idle) / 1e3,
            "idle_gaps_over_1ms": int(sum(g > 1.0 for g in idle)),
            "kv_receives": len(kv), "kv_receive": _q(list(1e3 * (kv[:, 1] - kv[:, 0]))),
        }
    speeds = {name: single_steps(rows, kvs[name]) for name, rows in steps.items()}
    for name, (t, x) in speeds.items():
        report[name]["speed"] = speed_stats(t, x)
    mig = np.array(trace["migrations"]).reshape(-1, 2)
    return {"instances": report, "speed_cross_corr": cross_corr(speeds),
            "migrations": _q(list(1e3 * (mig[:, 1] - mig[:, 0])))}


def single_steps(rows: list, kv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start times, log durations less their mean) of an instance's decode steps of one
    request that no KV receive overlapped: the same work but for the context, so what varies
    is the host's speed."""
    sel = [(r[1], np.log(r[2] - r[1])) for r in rows
           if r[3] == 0 and r[4] == 1 and r[2] > r[1] and not _overlaps(r[1], r[2], kv)]
    if len(sel) < MIN_SPEED_STEPS:
        return np.zeros(0), np.zeros(0)
    t, x = (np.array(v) for v in zip(*sel, strict=True))
    return t, x - x.mean()


def _lag_corr(ta: np.ndarray, xa: np.ndarray, tb: np.ndarray, xb: np.ndarray, lo: float,
              hi: float, same: bool) -> float | None:
    """Mean of xa_i * xb_j over pairs with lo <= t_b - t_a < hi (|t_b - t_a| < hi when not
    `same`), over sd(xa) sd(xb): the correlation of log speeds at that lag."""
    total, count = 0.0, 0
    for i in range(len(ta)):
        if same:
            j0, j1 = np.searchsorted(tb, ta[i] + lo), np.searchsorted(tb, ta[i] + hi)
            j0 = max(j0, i + 1)
        else:
            j0, j1 = np.searchsorted(tb, ta[i] - hi), np.searchsorted(tb, ta[i] + hi)
        if j1 > j0:
            total += xa[i] * float(np.sum(xb[j0:j1]))
            count += j1 - j0
    if count < MIN_SPEED_STEPS or xa.std() == 0 or xb.std() == 0:
        return None
    return float(total / count / (xa.std() * xb.std()))


def speed_stats(t: np.ndarray, x: np.ndarray) -> dict:
    """Log-sd of an instance's single-request decode steps and their autocorrelation by lag."""
    if not len(x):
        return {"steps": 0}
    return {"steps": len(x), "log_sd": float(x.std()),
            "autocorr": {f"{lo}-{hi} ms": _lag_corr(t, x, t, x, lo / 1e3, hi / 1e3, True)
                         for lo, hi in LAG_BINS_MS}}


def cross_corr(speeds: dict) -> dict:
    """Per pair of instances, the correlation of their single-request decode steps' log speeds
    over steps starting within CROSS_LAG_S of each other (< 0: they take turns being slow)."""
    names = sorted(n for n, (t, _) in speeds.items() if len(t))
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            out[f"{a}/{b}"] = _lag_corr(*speeds[a], *speeds[b], 0.0, CROSS_LAG_S, False)
    return out


def format_report(rep: dict) -> str:
    lines = []
    for name, r in rep["instances"].items():
        ratio = lambda x: "-" if x is None else f"{x:.2f}x"  # noqa: E731
        routed = f", {r['routed']} requests routed here" if r["routed"] else ""
        lines.append(f"{name}: {r['steps']} steps{routed}, busy {r['busy']:.2f}; decode step vs "
                     f"alone: KV landing {ratio(r['kv_landing_ratio'])}, another instance stepping "
                     f"{ratio(r['other_stepping_ratio'])}; idle between decode steps "
                     f"{r['idle_between_decode_steps_s']:.3f} s ({r['idle_gaps_over_1ms']} gaps "
                     f"> 1 ms)")
        for b, d in r["decode_ms_by_batch"].items():
            cells = "  ".join(f"{k} {v['p50_ms']:.2f}/{v['p90_ms']:.2f} ms (n={v['n']})"
                              for k, v in d.items() if v["n"])
            lines.append(f"    batch {b:>5}: p50/p90 {cells}")
        sp = r["speed"]
        if sp["steps"]:
            acf = ", ".join(f"{k} {'-' if v is None else f'{v:+.2f}'}"
                            for k, v in sp["autocorr"].items())
            lines.append(f"    speed ({sp['steps']} single-request decode steps): log-sd "
                         f"{sp['log_sd']:.2f}; autocorrelation {acf}")
        if r["kv_receives"]:
            k = r["kv_receive"]
            lines.append(f"    KV receives {r['kv_receives']}: p50/p90 {k['p50_ms']:.2f}/"
                         f"{k['p90_ms']:.2f} ms on the worker")
    for pair, c in rep["speed_cross_corr"].items():
        lines.append(f"speed {pair}: correlation of steps starting within "
                     f"{CROSS_LAG_S * 1e3:.0f} ms {'-' if c is None else f'{c:+.2f}'}")
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
