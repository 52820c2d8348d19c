"""Scoring and reporting of evaluation/bench_disagg_cpu.py: per-round SLOs (from that round's
unloaded latencies), attainment rows and goodputs; the pooled headline (each rate's attainment
averaged over rounds); pooling saved reports (`--pool-reports`); the table and the plot.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

TTFT_FACTOR, TPOT_TIGHT, TPOT_LOOSE, TARGET = 4.0, 2.0, 5.0, 0.9
# mode -> (DisaggConfig mode, instances, torch threads per worker, --kv-transport, async
# scheduling); each mode uses both cores. "disaggregated" takes the engine's defaults (KV over
# shared memory, async scheduling); "-sync" schedules one step at a time and "-gloo" forces gloo,
# so their share of the result is measured side by side. The baseline is the best colocated mode.
MODES = {"disaggregated": ("disaggregated", 1, 1, "auto", True),
         "disaggregated-sync": ("disaggregated", 1, 1, "auto", False),
         "disaggregated-gloo": ("disaggregated", 1, 1, "gloo", True),
         "colocated-2x1": ("colocated", 2, 1, "auto", True),
         "colocated-2x1-sync": ("colocated", 2, 1, "auto", False),
         "colocated-1x2": ("colocated", 1, 2, "auto", True)}
DEFAULT_MODES = ("disaggregated", "disaggregated-sync", "colocated-2x1", "colocated-2x1-sync",
                 "colocated-1x2")
DISAGG = "disaggregated"  # the mode the goal is about


def score(runs: list[dict], ttft_ms: float, tpot_ms: float) -> tuple[list, float]:
    from distllm.metrics import max_rate_meeting, summarize

    rows = [dict(rate=r["rate"], **summarize(r["records"], r["duration_s"], ttft_ms, tpot_ms))
            for r in runs]
    goodput = max_rate_meeting([(r["rate"], r["attainment"]) for r in rows], TARGET)
    return rows, goodput


def round_slos(results: dict) -> dict[str, tuple[float, float]]:
    """A round's SLOs from its unloaded latencies, the best of the modes."""
    prefill_s = min(r["unloaded"][0] for r in results.values())
    decode_s = min(r["unloaded"][1] for r in results.values())
    return {"tight": (TTFT_FACTOR * prefill_s * 1e3, TPOT_TIGHT * decode_s * 1e3),
            "loose": (TTFT_FACTOR * prefill_s * 1e3, TPOT_LOOSE * decode_s * 1e3)}


def ratio(goodputs: dict[str, float]) -> float:
    """Disaggregated goodput over the best colocated mode's."""
    best = max(g for m, g in goodputs.items() if MODES[m][0] == "colocated")
    return goodputs[DISAGG] / best if best > 0 else float("inf")


def ratios_by_mode(goodputs: dict[str, float]) -> dict[str, float]:
    """Disaggregated goodput over each colocated mode's (the issue's baseline, one colocated
    instance on both cores, is colocated-1x2; colocated-2x1 is the stronger one)."""
    return {m: goodputs[DISAGG] / g if g > 0 else float("inf")
            for m, g in goodputs.items() if MODES[m][0] == "colocated"}


def make_report(swept: dict, args: argparse.Namespace, load_before: tuple) -> dict:
    """Per round: SLOs, rows and goodputs; then `pooled_summary` (the headline)."""
    rounds = []
    for results in swept["rounds"]:
        slos = round_slos(results)
        modes = {m: {name: dict(zip(("rows", "goodput_rps"), score(r["runs"], *slo),
                                    strict=True)) for name, slo in slos.items()}
                 for m, r in results.items()}
        rounds.append({"unloaded_ms": {m: [1e3 * x for x in r["unloaded"]]
                                       for m, r in results.items()},
                       "slo_ms": slos, "modes": modes,
                       **{f"goodput_ratio_{n}": ratio({m: v[n]["goodput_rps"]
                                                       for m, v in modes.items()})
                          for n in slos}})
    report = {"meta": {**vars(args), "loadavg_before": load_before,
                       "loadavg_after": os.getloadavg()},
              "model": swept.get("model", {}), "modes_spec": {m: MODES[m] for m in args.modes},
              "rounds": rounds, "migration": swept["migration"]}
    return {**report, **pooled_summary(rounds, args.modes, args.rates)}


def pooled_summary(rounds: list[dict], modes: list[str], rates: list[float]) -> dict:
    """The headline over `rounds` (each scored against its own SLOs): per mode and SLO the mean
    attainment per rate and its goodput; disaggregated over best colocated, pooled and per
    round."""
    from distllm.metrics import max_rate_meeting

    pooled: dict[str, dict] = {m: {} for m in modes}
    for name in ("tight", "loose"):
        for mode in modes:
            points = [(rate, float(np.mean([rd["modes"][mode][name]["rows"][i]["attainment"]
                                            for rd in rounds])))
                      for i, rate in enumerate(rates)]
            pooled[mode][name] = {"attainment": points,
                                  "goodput_rps": max_rate_meeting(points, TARGET)}
    out: dict = {"pooled": pooled}
    for name in ("tight", "loose"):
        out[f"goodput_ratio_{name}"] = ratio({m: v[name]["goodput_rps"]
                                              for m, v in pooled.items()})
        out[f"goodput_ratio_{name}_rounds"] = [rd[f"goodput_ratio_{name}"] for rd in rounds]
        out[f"goodput_ratio_{name}_by_mode"] = ratios_by_mode({m: v[name]["goodput_rps"]
                                                              for m, v in pooled.items()})
        out[f"goodput_ratio_{name}_by_mode_rounds"] = [
            ratios_by_mode({m: v[name]["goodput_rps"] for m, v in rd["modes"].items()})
            for rd in rounds]
    return out


def pool_reports(paths: list[Path]) -> dict:
    """One report over the rounds of several saved reports (same rates and modes): more
    requests behind each rate's attainment. ValueError naming the file that differs."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    rates, modes = reports[0]["meta"]["rates"], reports[0]["meta"]["modes"]
    for path, rep in zip(paths, reports, strict=True):
        if rep["meta"]["rates"] != rates or rep["meta"]["modes"] != modes:
            raise ValueError(f"--pool-reports: {path} has rates {rep['meta']['rates']} and modes "
                             f"{rep['meta']['modes']}, {paths[0]} {rates} and {modes}")
        if rep.get("modes_spec") != reports[0].get("modes_spec"):  # e.g. an older engine's
            raise ValueError(f"--pool-reports: {path} ran its modes as {rep.get('modes_spec')}, "
                             f"{paths[0]} as {reports[0].get('modes_spec')}")
        cap = rep["meta"].get("prefill_saturation_tokens")
        if cap != reports[0]["meta"].get("prefill_saturation_tokens"):
            raise ValueError(f"--pool-reports: {path} capped prefill batches at {cap} tokens, "
                             f"{paths[0]} at "
                             f"{reports[0]['meta'].get('prefill_saturation_tokens')}")
    rounds = [rd for rep in reports for rd in rep["rounds"]]
    return {"meta": {"pooled_from": [str(p) for p in paths], "rates": rates, "modes": modes,
                     "prefill_saturation_tokens":
                         reports[0]["meta"].get("prefill_saturation_tokens")},
            "model": reports[0].get("model", {}), "modes_spec": reports[0]["modes_spec"],
            "rounds": rounds, "migration": {f"{p}: {m}": v for p, rep in zip(paths, reports,
                                                                           strict=True)
                                            for m, v in rep["migration"].items()},
            **pooled_summary(rounds, modes, rates)}


def print_table(report: dict) -> None:
    for k, rd in enumerate(report["rounds"]):
        print(f"\n=== round {k}: unloaded (prefill of a mean prompt, decode step) ms: "
              + ", ".join(f"{m} {p:.0f}/{d:.1f}" for m, (p, d) in rd["unloaded_ms"].items()))
        for name, (ttft, tpot) in rd["slo_ms"].items():
            print(f"SLO {name}: TTFT <= {ttft:.1f} ms, TPOT <= {tpot:.1f} ms")
            print(f"{'rate':>6} | {'mode':>18} | {'attain':>6} | {'p90 TTFT':>9} | "
                  f"{'p90 TPOT':>9}")
            for mode, per_slo in rd["modes"].items():
                for row in per_slo[name]["rows"]:
                    print(f"{row['rate']:6.2f} | {mode:>18} | {row['attainment']:6.2f} | "
                          f"{row['p90_ttft_ms']:9.1f} | {row['p90_tpot_ms']:9.1f}")
            goodputs = {m: round(v[name]["goodput_rps"], 2) for m, v in rd["modes"].items()}
            print(f"goodput req/s: {goodputs}, disagg / best colocated = "
                  f"{rd[f'goodput_ratio_{name}']:.2f}")
    print(f"\n=== pooled over {len(report['rounds'])} round(s) (mean attainment per rate)")
    for name in ("tight", "loose"):
        goodputs = {m: round(v[name]["goodput_rps"], 2) for m, v in report["pooled"].items()}
        rounds = ", ".join(f"{x:.2f}" for x in report[f"goodput_ratio_{name}_rounds"])
        print(f"SLO {name}: goodput (>= {TARGET:.0%} attainment) req/s {goodputs}; disagg / "
              f"best colocated = {report[f'goodput_ratio_{name}']:.2f} (rounds: {rounds})")
        per_round = report.get(f"goodput_ratio_{name}_by_mode_rounds", [])
        for mode, r in report.get(f"goodput_ratio_{name}_by_mode", {}).items():
            each = [x[mode] for x in per_round]
            span = f" (rounds {min(each):.2f}-{max(each):.2f})" if each else ""
            print(f"  disagg / {mode} = {r:.2f}{span}")
    for mode, mig in report["migration"].items():
        print(f"KV migration ({mode}): {mig['bytes'] / 1e6:.1f} MB in "
              f"{mig['transfer_s'] * 1e3:.1f} ms = {mig['gb_s']:.2f} GB/s; memcpy "
              f"{mig['memcpy_gb_s']:.2f} GB/s")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slos = report["rounds"][0]["slo_ms"]
    fig, axes = plt.subplots(1, len(slos), figsize=(11, 4), sharey=True)
    for ax, name in zip(axes, slos, strict=True):
        for mode, per_slo in report["pooled"].items():
            pts = per_slo[name]["attainment"]
            ax.plot([r for r, _ in pts], [a for _, a in pts], marker="o",
                    label=f"{mode} (goodput {per_slo[name]['goodput_rps']:.2f}/s)")
        ax.axhline(TARGET, color="gray", linestyle="--", linewidth=0.8)
        ttft, tpot = slos[name]
        ax.set_title(f"{name} (round 0: TTFT<={ttft:.0f} ms, TPOT<={tpot:.0f} ms)", fontsize=9)
        ax.set_xlabel("request rate (req/s)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(f"SLO attainment (mean of {len(report['rounds'])} round(s))")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
