"""PNG plots for evaluation/analyze.py (matplotlib, Agg backend; no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evaluation.analyze import PHASES, group_runs, series_label  # noqa: E402
from evaluation.exp_format import ExpRun  # noqa: E402

MAX_CURVES = 8  # runs drawn per CDF / SLO-scale plot (evenly picked by rate)


def _pick(runs: Sequence[ExpRun]) -> list[ExpRun]:
    if len(runs) <= MAX_CURVES:
        return list(runs)
    step = (len(runs) - 1) / (MAX_CURVES - 1)
    return [runs[round(i * step)] for i in range(MAX_CURVES)]


def plot_attainment_vs_rate(rows: list[dict], target: float, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    for ax, key, title in zip(
        axes,
        ("attainment", "attainment_ttft", "attainment_tpot"),
        ("both SLOs", "TTFT SLO only", "TPOT SLO only"),
        strict=True,
    ):
        for series in dict.fromkeys(r["series"] for r in rows):
            pts = [(r["rate"], r[key]) for r in rows if r["series"] == series]
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=series)
        ax.axhline(100 * target, color="grey", linestyle="--", linewidth=1)
        ax.set(title=title, xlabel="rate (req/s)")
    axes[0].set_ylabel("SLO attainment (%)")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_slo_scale(runs: Sequence[ExpRun], curves: dict, target: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in _pick(runs):
        pts = curves[f"{series_label(run)}@{run.rate:g}"]
        ax.plot(
            [p[0] for p in pts],
            [100 * p[1] for p in pts],
            marker=".",
            label=f"{series_label(run)} @ {run.rate:g}/s",
        )
    ax.axhline(100 * target, color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="SLO scale", ylabel="SLO attainment (%)", title="attainment vs SLO scale")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency_cdfs(runs: Sequence[ExpRun], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    getters = (
        ("TTFT (ms)", lambda r: [r.ttft]),
        ("TPOT (ms)", lambda r: [r.tpot] if len(r.token_timestamps) > 1 else []),
        ("end-to-end (ms)", lambda r: [r.latency]),
    )
    for ax, (name, get) in zip(axes, getters, strict=True):
        for run in _pick(runs):
            xs = sorted(1e3 * x for rec in run.records if rec.ok for x in get(rec))
            if xs:
                ax.plot(
                    xs,
                    [(i + 1) / len(xs) for i in range(len(xs))],
                    label=f"{series_label(run)} @ {run.rate:g}/s",
                )
        ax.set(xlabel=name, ylabel="CDF")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_breakdown(breakdown: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(6, len(breakdown) * 0.8), 4))
    labels = [f"{b['series']}\n@{b['rate']:g}/s" for b in breakdown]
    bottom = [0.0] * len(breakdown)
    for phase in PHASES:
        vals = [1e3 * b[phase] for b in breakdown]
        ax.bar(labels, vals, bottom=bottom, label=phase)
        bottom = [a + v for a, v in zip(bottom, vals, strict=True)]
    ax.set(ylabel="mean time per request (ms)", title="latency breakdown")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(runs: Sequence[ExpRun], rows: list[dict], result: dict, out_dir: Path) -> list[str]:
    """Write every plot that has data; returns the file names."""
    target = result["slo"]["attainment"]
    ordered = [r for g in group_runs(runs).values() for r in g]
    written = []
    plot_attainment_vs_rate(rows, target, out_dir / "attainment_vs_rate.png")
    written.append("attainment_vs_rate.png")
    plot_slo_scale(ordered, result["slo_scale"], target, out_dir / "attainment_vs_slo_scale.png")
    written.append("attainment_vs_slo_scale.png")
    plot_latency_cdfs(ordered, out_dir / "latency_cdf.png")
    written.append("latency_cdf.png")
    if result["breakdown"]:
        plot_breakdown(result["breakdown"], out_dir / "latency_breakdown.png")
        written.append("latency_breakdown.png")
    return written
