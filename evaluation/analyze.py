"""Analyse `.exp` files (real or simulated; same schema): tables and PNG plots of SLO attainment
vs rate (both SLOs, TTFT only, TPOT only), attainment vs SLO scale, latency CDFs, and the
per-request latency breakdown from lifecycle events.

    python -m evaluation.analyze results/ --ttft-slo-ms 200 --tpot-slo-ms 100 --output-dir plots

Runs are grouped into series by `meta.label` (else backend + dataset file name) and ordered by
rate. SLOs default to the ones recorded in the first file's meta.
Breakdown phases (server clock, seconds): prefill_queueing = prefill_begin - arrival;
prefill = prefill_end - prefill_begin; transfer = migration_end - migration_begin (0 when
colocated); decode_queueing = decode_begin - (migration_end or prefill_end);
decode = decode_end - decode_begin. Repeated events (preemption) use the latest; arrival the first.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distllm.metrics import max_rate_meeting, percentile, slo_attainment
from distllm.request import Lifetime
from evaluation.exp_format import ExpRun, load_exp

PHASES = ("prefill_queueing", "prefill", "transfer", "decode_queueing", "decode")
DEFAULT_SCALES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)


def load_runs(paths: Sequence[str | Path]) -> list[ExpRun]:
    """Load `.exp` files; directories contribute every `*.exp` inside them."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.exp")) if p.is_dir() else [p])
    return [load_exp(f) for f in files]


def series_label(run: ExpRun) -> str:
    if run.meta.get("label"):
        return str(run.meta["label"])
    dataset = Path(str(run.meta.get("dataset") or "")).name
    return "-".join(x for x in (str(run.meta.get("backend") or "run"), dataset) if x)


def group_runs(runs: Sequence[ExpRun]) -> dict[str, list[ExpRun]]:
    """label -> runs sorted by rate."""
    groups: dict[str, list[ExpRun]] = {}
    for run in runs:
        groups.setdefault(series_label(run), []).append(run)
    return {k: sorted(v, key=lambda r: r.rate) for k, v in groups.items()}


def latency_breakdown(life: Lifetime) -> dict[str, float] | None:
    """Seconds per phase of one request; None when the lifetime lacks the needed events."""
    arrival, pb, pe = life.first("arrival"), life.get("prefill_begin"), life.get("prefill_end")
    db, de = life.get("decode_begin"), life.get("decode_end")
    if None in (arrival, pb, pe, db, de):
        return None
    mb, me = life.get("migration_begin"), life.get("migration_end")
    transfer = me - mb if mb is not None and me is not None else 0.0
    return {
        "prefill_queueing": pb - arrival,
        "prefill": pe - pb,
        "transfer": transfer,
        "decode_queueing": db - (me if me is not None else pe),
        "decode": de - db,
    }


def mean_breakdown(run: ExpRun) -> dict[str, float] | None:
    parts = [b for b in map(latency_breakdown, run.lifetimes) if b is not None]
    if not parts:
        return None
    return {ph: sum(b[ph] for b in parts) / len(parts) for ph in PHASES}


def run_row(run: ExpRun, ttft_slo_ms: float | None, tpot_slo_ms: float | None) -> dict:
    ok = [r for r in run.records if r.ok]
    multi = [r.tpot for r in ok if len(r.token_timestamps) > 1]
    duration = run.meta.get("duration_s") or run.summary.get("duration_s") or math.nan
    return {
        "series": series_label(run),
        "rate": run.rate,
        "num_requests": len(run.records),
        "failed": len(run.records) - len(ok),
        "attainment": slo_attainment(run.records, ttft_slo_ms, tpot_slo_ms),
        "attainment_ttft": slo_attainment(run.records, ttft_slo_ms, None),
        "attainment_tpot": slo_attainment(run.records, None, tpot_slo_ms),
        "p50_ttft_ms": percentile([r.ttft for r in ok], 50) * 1e3,
        "p90_ttft_ms": percentile([r.ttft for r in ok], 90) * 1e3,
        "p90_tpot_ms": percentile(multi, 90) * 1e3,
        "p90_e2el_ms": percentile([r.latency for r in ok], 90) * 1e3,
        "request_throughput": len(ok) / duration if duration else math.nan,
    }


def slo_scale_curve(
    run: ExpRun,
    ttft_slo_ms: float | None,
    tpot_slo_ms: float | None,
    scales: Sequence[float] = DEFAULT_SCALES,
) -> list[tuple[float, float]]:
    """(scale, attainment with both SLOs multiplied by scale)."""

    def scaled(x: float | None, s: float) -> float | None:
        return None if x is None else x * s

    return [
        (s, slo_attainment(run.records, scaled(ttft_slo_ms, s), scaled(tpot_slo_ms, s)))
        for s in scales
    ]


def goodput_by_series(rows: list[dict], target: float) -> dict[str, dict[str, float]]:
    """DistServe goodput per series and per SLO kind (both / ttft / tpot)."""
    out: dict[str, dict[str, float]] = {}
    for series in dict.fromkeys(r["series"] for r in rows):
        pts = [r for r in rows if r["series"] == series and math.isfinite(r["rate"])]
        out[series] = {
            key: max_rate_meeting([(r["rate"], r[key]) for r in pts], target)
            for key in ("attainment", "attainment_ttft", "attainment_tpot")
        }
    return out


def write_table(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()]
        lines.append("| " + " | ".join(cells) + " |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def resolve_slos(
    runs: Sequence[ExpRun], ttft: float | None, tpot: float | None, target: float | None
) -> tuple[float | None, float | None, float]:
    meta = runs[0].meta if runs else {}
    ttft = ttft if ttft is not None else meta.get("ttft_slo_ms")
    tpot = tpot if tpot is not None else meta.get("tpot_slo_ms")
    target = target if target is not None else float(meta.get("attainment") or 0.9)
    return ttft, tpot, target / 100 if target > 1 else target


def analyze(
    runs: Sequence[ExpRun],
    out_dir: Path,
    ttft_slo_ms: float | None,
    tpot_slo_ms: float | None,
    target: float,
    plots: bool = True,
) -> dict:
    """Write tables (+ PNGs) into out_dir; returns everything as one JSON-able dict."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [run_row(r, ttft_slo_ms, tpot_slo_ms) for g in group_runs(runs).values() for r in g]
    write_table(out_dir / "attainment", rows)
    breakdown = [
        {"series": series_label(r), "rate": r.rate, **b}
        for r in runs
        if (b := mean_breakdown(r)) is not None
    ]
    write_table(out_dir / "breakdown", breakdown)
    result = {
        "slo": {"ttft_ms": ttft_slo_ms, "tpot_ms": tpot_slo_ms, "attainment": target},
        "rows": rows,
        "goodput": goodput_by_series(rows, target),
        "breakdown": breakdown,
        "slo_scale": {
            f"{series_label(r)}@{r.rate:g}": slo_scale_curve(r, ttft_slo_ms, tpot_slo_ms)
            for r in runs
        },
    }
    if plots:
        from evaluation.analysis_plots import write_plots

        result["plots"] = write_plots(runs, rows, result, out_dir)
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help=".exp files or folders of them")
    p.add_argument("--output-dir", default="analysis")
    p.add_argument("--ttft-slo-ms", type=float, default=None)
    p.add_argument("--tpot-slo-ms", type=float, default=None)
    p.add_argument("--attainment", type=float, default=None, help="target: 0.9 or 90 (%%)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    runs = load_runs(args.paths)
    if not runs:
        p.error("argument paths: no .exp files found")
    ttft, tpot, target = resolve_slos(runs, args.ttft_slo_ms, args.tpot_slo_ms, args.attainment)
    res = analyze(runs, Path(args.output_dir), ttft, tpot, target, plots=not args.no_plots)
    sys.stdout.write((Path(args.output_dir) / "attainment.md").read_text())
    for series, g in res["goodput"].items():
        sys.stdout.write(f"goodput {series}: {g['attainment']:.4g} req/s (both SLOs)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
