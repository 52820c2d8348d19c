"""Report side of evaluation/validate_simulator.py: metrics of a `.exp`, simulated-vs-real errors
with the lifecycle term that is most off, pass rule, medians over repeated rounds, the overlay
plot and the text table (with the host's measured CPU use and the calibration: rounds, factors,
fixed per-step decode cost).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

TERMS = ("queueing", "prefill", "transfer", "decode")


def metrics_of(exp_path: Path, slo: tuple[float, float]) -> dict:
    from distllm.metrics import slo_attainment
    from evaluation.exp_format import load_exp
    from simdist.calibrate import latency_quantiles, lifecycle_terms

    run = load_exp(exp_path)
    completed = sum(r.ok for r in run.records)
    out = {"attainment": slo_attainment(run.records, *slo), "completed": completed,
           "failed": len(run.records) - completed, **latency_quantiles(run.records)}
    out["terms_ms"] = lifecycle_terms(run.records, run.lifetimes)
    out.update(term_tails(run.records, run.lifetimes))
    out["token_gaps_ms"] = token_gaps(run.records)
    return out


def token_gaps(records: list) -> dict:
    """p50 / p90 of the gaps between a request's consecutive output tokens after its second
    (ms, over every finished request; the first gap carries a migration): the spread of the
    decode steps as the requests saw them. On the 2-core demo host the real gaps' p90 / p50 is
    1.5-1.9 while simdist's is 1.1-1.3 (the worker's speed wanders: evaluation/
    step_trace_report.py), which a p90 TPOT miss can come from."""
    from distllm.metrics import percentile

    gaps = [1e3 * (b - a) for r in records if r.ok
            for a, b in zip(r.token_timestamps[1:], r.token_timestamps[2:], strict=False)]
    if not gaps:
        return {"p50": math.nan, "p90": math.nan}
    return {"p50": percentile(gaps, 50), "p90": percentile(gaps, 90)}


def term_tails(records: list, lifetimes: list) -> dict:
    """p90 over the finished requests of each lifecycle term (ms; decode per output token;
    transfer over the requests that migrated) and their mean decode tokens (output - 1), by
    which a migration spreads over TPOT."""
    from distllm.metrics import percentile
    from simdist.calibrate import request_terms

    per = [t for t in (request_terms(r, life) for r, life in zip(records, lifetimes,
                                                                  strict=True)) if t]
    p90 = {}
    for name in TERMS:
        # NOTE: every request queues and prefills (often 0 ms of queueing: kept); only the
        # requests that migrated / decoded have the other terms
        values = [1e3 * t[name] for t in per if name in ("queueing", "prefill") or t[name] > 0]
        p90[name] = percentile(values, 90) if values else 0.0
    tokens = [r.output_len - 1 for r in records if r.ok and r.output_len > 1]
    return {"terms_p90_ms": p90, "decode_tokens": float(np.mean(tokens)) if tokens else 1.0}


# the terms a metric is made of: TTFT = queueing + prefill (+ the frontend's latency, which is
# measured, not modelled); TPOT = the migration spread over the decode tokens + decode per token
METRIC_TERMS = {"ttft": ("queueing", "prefill"), "tpot": ("transfer", "decode")}


def compare(real: dict, sim: dict) -> dict:
    """Errors of the simulation against the measurement, the term whose mean is most off, and
    per metric (TTFT, TPOT) the term whose tail is most off: of the metric's terms, the largest
    p90 difference in the metric's units (ms; a migration's per output token)."""
    err = {"attainment_pp": 100 * (sim["attainment"] - real["attainment"])}
    for key in ("p50_ttft_ms", "p90_ttft_ms", "p50_tpot_ms", "p90_tpot_ms"):
        err[key.replace("_ms", "_rel")] = (sim[key] - real[key]) / real[key] if real[key] else 0.0
    diffs = {t: sim["terms_ms"][t] - real["terms_ms"][t] for t in TERMS}
    err["term_diff_ms"] = diffs
    err["most_off_term"] = max(diffs, key=lambda t: abs(diffs[t]))
    if "terms_p90_ms" in real and "terms_p90_ms" in sim:
        rp, sp = real["terms_p90_ms"], sim["terms_p90_ms"]
        err["term_p90_rel"] = {t: (sp[t] - rp[t]) / rp[t] if rp[t] else 0.0 for t in TERMS}
        per_token = {"transfer": max(real.get("decode_tokens", 1.0), 1.0)}
        tails = {}
        for metric, terms in METRIC_TERMS.items():
            off = {t: (sp[t] - rp[t]) / per_token.get(t, 1.0) for t in terms}
            term = max(off, key=lambda t, o=off: abs(o[t]))
            tails[metric] = {"term": term, "p90_diff_ms": off[term],
                             "p90_rel": err["term_p90_rel"][term]}
        err["tail_off_term"] = tails
    rg, sg = real.get("token_gaps_ms", {}), sim.get("token_gaps_ms", {})
    if all(math.isfinite(g.get(q, math.nan)) and g[q] > 0 for g in (rg, sg)
           for q in ("p50", "p90")):
        err["token_gap_spread"] = {"real": rg["p90"] / rg["p50"], "sim": sg["p90"] / sg["p50"]}
    return err


def miss_terms(row: dict, pp: float = 5.0, rel: float = 0.10) -> str:
    """For a row that misses: per missed metric, the term whose tail is most off (attainment:
    both metrics' terms); '' for a row without tail terms (older reports)."""
    e = row["error"]
    tails = e.get("tail_off_term")
    if not tails:
        return ""
    missed = [m for m in ("ttft", "tpot") if abs(e[f"p90_{m}_rel"]) > rel]
    if abs(e["attainment_pp"]) > pp:
        missed = ["ttft", "tpot"]
    parts = [f"{m.upper()}: {tails[m]['term']} p90 {100 * tails[m]['p90_rel']:+.0f} %"
             for m in missed]
    spread = e.get("token_gap_spread")
    if spread and "tpot" in missed:
        parts[-1] += (f" (token gaps p90/p50 real {spread['real']:.2f}, sim "
                      f"{spread['sim']:.2f})")
    return "; ".join(parts)


def passes(err: dict, pp: float = 5.0, rel: float = 0.10) -> bool:
    return (abs(err["attainment_pp"]) <= pp and abs(err["p90_ttft_rel"]) <= rel
            and abs(err["p90_tpot_rel"]) <= rel)


def real_spread(runs: list[dict]) -> dict | None:
    """How much repeated real rounds of one trace disagree (None with one round): attainment
    range in points, p90 TTFT / TPOT range over their median. A simulation error inside this
    spread cannot be told apart from the host's own run-to-run noise."""
    if len(runs) < 2:
        return None
    out = {"attainment_pp": 100 * (max(r["attainment"] for r in runs)
                                   - min(r["attainment"] for r in runs))}
    for key in ("p90_ttft_ms", "p90_tpot_ms"):
        values = [r[key] for r in runs]
        mid = float(np.median(values))
        out[key.replace("_ms", "_rel")] = (max(values) - min(values)) / mid if mid else 0.0
    return out


MEDIAN_SE = 1.2533  # standard error of a median / of a mean, normal noise (sqrt(pi / 2))


def real_stderr(runs: list[dict]) -> dict | None:
    """Standard error of the reported real figures (medians over the rounds; None with one
    round): attainment in points, p90 TTFT / TPOT relative to their median. An error of a
    perfect simulation scatters this much around 0, so a target tighter than about twice it
    cannot be told from the host's noise in this run (more --repeats shrink it as 1/sqrt(n))."""
    if len(runs) < 2:
        return None
    n = len(runs)
    out = {"attainment_pp": 100 * MEDIAN_SE * float(np.std([r["attainment"] for r in runs],
                                                          ddof=1)) / np.sqrt(n)}
    for key in ("p90_ttft_ms", "p90_tpot_ms"):
        values = [r[key] for r in runs]
        mid = float(np.median(values))
        sd = float(np.std(values, ddof=1))
        out[key.replace("_ms", "_rel")] = MEDIAN_SE * sd / np.sqrt(n) / mid if mid else 0.0
    return out


def unbiased_pass_probability(stderrs: list[dict], pp: float = 5.0, rel: float = 0.10) -> float:
    """Probability that a simulation equal to the true (noise-free) figures meets every target
    (`passes`) in all rows, when each row's real medians scatter normally with its standard
    errors (real_stderr) and independently: the most a perfect simulator could score in such a
    run (the calibration's own error not counted)."""
    prob = 1.0
    for se in stderrs:
        for key, tol in (("attainment_pp", pp), ("p90_ttft_rel", rel), ("p90_tpot_rel", rel)):
            if se[key] > 0:
                prob *= math.erf(tol / se[key] / math.sqrt(2.0))
    return prob


def within_spread(err: dict, spread: dict | None) -> bool | None:
    """Every error of `passes` within the target or within the real rounds' own spread."""
    if spread is None:
        return None
    return (abs(err["attainment_pp"]) <= max(5.0, spread["attainment_pp"])
            and abs(err["p90_ttft_rel"]) <= max(0.10, spread["p90_ttft_rel"])
            and abs(err["p90_tpot_rel"]) <= max(0.10, spread["p90_tpot_rel"]))


def median_metrics(runs: list[dict]) -> dict:
    """Per metric, the median over repeated real rounds of one trace (the host is shared:
    back-to-back rounds of the same trace can differ by tens of points); `runs` keeps each."""
    out = {}
    for k, v in runs[0].items():  # dict values (terms_ms, host_cores): median per entry
        out[k] = ({t: float(np.median([r[k][t] for r in runs])) for t in v}
                  if isinstance(v, dict) else float(np.median([r[k] for r in runs])))
    return {**out, "runs": runs} if len(runs) > 1 else out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("attainment", "p90_ttft_ms", "p90_tpot_ms")
    fig, axes = plt.subplots(1, len(keys), figsize=(13, 3.8))
    for ax, key in zip(axes, keys, strict=True):
        for i, (mode, rows) in enumerate(report["modes"].items()):
            rates = [r["rate"] for r in rows]
            color = f"C{i}"
            ax.plot(rates, [r["real"][key] for r in rows], "o-", color=color, label=f"{mode} real")
            if all(r["real"].get("runs") for r in rows):  # the real rounds' range
                lo = [min(x[key] for x in r["real"]["runs"]) for r in rows]
                hi = [max(x[key] for x in r["real"]["runs"]) for r in rows]
                ax.fill_between(rates, lo, hi, color=color, alpha=0.15, linewidth=0)
            ax.plot(rates, [r["sim"][key] for r in rows], "x--", color=color, label=f"{mode} sim")
        ax.set_xlabel("request rate (req/s)")
        ax.set_title(key)
    axes[0].legend(fontsize=7)
    if any(r["real"].get("runs") for rows in report["modes"].values() for r in rows):
        fig.suptitle("shaded: range of the real rounds (median drawn)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(report: dict) -> str:
    slo = report["slo_ms"]
    lines = [f"SLO: TTFT <= {slo['ttft']} ms, TPOT <= {slo['tpot']} ms",
             f"{'mode':>13} {'rate':>5} | {'attain real/sim':>15} {'err pp':>6} {'raw':>6} | "
             f"{'p50/p90 TTFT err':>16} | {'p50/p90 TPOT err':>16} | most-off term"]
    for mode, rows in report["modes"].items():
        for r in rows:
            e = r["error"]
            term = e["most_off_term"]
            lines.append(
                f"{mode:>13} {r['rate']:5g} | {r['real']['attainment']:7.2f}/"
                f"{r['sim']['attainment']:<7.2f} {e['attainment_pp']:+6.1f} "
                f"{r['error_raw']['attainment_pp']:+6.1f} | "
                f"{100 * e['p50_ttft_rel']:+6.1f}/{100 * e['p90_ttft_rel']:+6.1f} % | "
                f"{100 * e['p50_tpot_rel']:+6.1f}/{100 * e['p90_tpot_rel']:+6.1f} % | "
                f"{term} {e['term_diff_ms'][term]:+.1f} ms{'' if r['pass'] else '  MISS'}"
                + _spread_text(r) + (f"  [{miss_terms(r)}]" if not r["pass"] and miss_terms(r)
                                     else ""))
    lines.append("err: calibrated profile (raw: as profiled); TTFT/TPOT errors (sim - real) / "
                 f"real; all within target (5 pp, 10 %): {report['all_pass']}")
    lines.append("most-off term: largest difference of the terms' means; [per missed metric: "
                 "of its terms (TTFT: queueing, prefill; TPOT: transfer per token, decode), the "
                 "one whose p90 is most off]")
    if any(r.get("real_spread") for rows in report["modes"].values() for r in rows):
        lines.append("spread: real rounds of the same trace, max - min (attainment pp; p90 TTFT / "
                     "TPOT % of their median); 'noise' marks a miss inside that spread")
    ses = [r["real_stderr"] for rows in report["modes"].values() for r in rows
           if r.get("real_stderr")]
    if ses:
        med = {k: float(np.median([s[k] for s in ses])) for k in ses[0]}
        lines.append(f"noise: standard error of the real medians, median over the rows: "
                     f"attainment {med['attainment_pp']:.1f} pp, p90 TTFT "
                     f"{100 * med['p90_ttft_rel']:.1f} %, p90 TPOT {100 * med['p90_tpot_rel']:.1f}"
                     f" % (targets 5 pp, 10 %); schedule: "
                     f"{report.get('meta', {}).get('schedule', 'sequential')}")
        if len(ses) == sum(len(rows) for rows in report["modes"].values()):
            lines.append(f"an unbiased simulation would meet every target in all rows with "
                         f"probability {unbiased_pass_probability(ses):.2f} (normal noise of "
                         f"these standard errors)")
    return "\n".join(lines + host_lines(report))


def _spread_text(row: dict) -> str:
    spread = row.get("real_spread")
    if not spread:
        return ""
    text = (f"  spread {spread['attainment_pp']:.1f} pp {100 * spread['p90_ttft_rel']:.0f}/"
            f"{100 * spread['p90_tpot_rel']:.0f} %")
    return text + (" (noise)" if not row["pass"] and row.get("within_spread") else "")


def calibration_lines(mode: str, cal: dict) -> list[str]:
    """The calibration of one mode: rounds (and their rates), factors, the fixed per-step
    decode cost and how its fit went (simdist.calibrate.decode_fit)."""
    f, fit = cal["factors"], cal.get("decode_fit") or {}
    rates = "/".join(f"{r:g}" for r in cal.get("rates", []))
    lines = [f"{mode}: calibration on {cal.get('rounds_used', 1)} round(s)"
             + (f" at {rates} req/s" if rates else "") + f" ({cal['num_requests']} requests): "
             f"factors prefill {f['prefill']:.3f} decode {f['decode']:.3f} transfer "
             f"{f['transfer']:.3f}, fixed decode step {cal.get('decode_step_ms', 0.0):.2f} ms"]
    if fit.get("note"):
        sweep = cal.get("decode_sweep")
        src = (f" (decode sweep, b = {','.join(map(str, sweep))})" if sweep
               else f" ({fit['source']})" if fit.get("source") else "")
        lines.append(f"  decode fit{src}: {fit['note']}; residual {fit['residual_ms']:.2f} "
                     f"ms/token ({100 * fit['residual_rel']:.0f} %)")
    return lines


def host_lines(report: dict) -> list[str]:
    """Per mode: the calibration factors and measured host section, and the host's CPU use
    (cores) in each rate's real rounds: the direction of the contention the model follows."""
    lines = []
    for mode, cal in report.get("calibration", {}).items():
        lines += calibration_lines(mode, cal)
        host = report.get("host", {}).get(mode)
        if host:
            lines.append(f"  host ({host['cores']} cores): frontend "
                         f"{host['frontend_cpu_ms_per_step']:.2f} ms CPU/step, load generator "
                         f"{host['frontend_cpu_ms_per_token']:.3f} ms/token, other load "
                         f"{host['background_cores']:.2f} cores, frontend latency "
                         f"{host.get('frontend_latency_ms', 0.0):.1f} ms")
            lines += contention_lines(host) + jitter_lines(host)
    for mode, rows in report["modes"].items():
        cores = [(r["rate"], r["real"].get("host_cores")) for r in rows]
        text = ", ".join(f"{rate:g}: {c['worker']:.2f}/{c['frontend']:.2f}/{c['loadgen']:.2f}/"
                         f"{c['background']:.2f}" for rate, c in cores if c)
        if text:
            lines.append(f"{mode} cores busy (workers/frontend/loadgen/other) by rate: {text}")
    return lines


def contention_lines(host: dict) -> list[str]:
    """The host's contention coefficients, and (when fitted) the log slowdowns they match."""
    if "contention_prefill" not in host and "contention_decode" not in host:
        return []
    line = (f"  contention (per other busy worker): prefill "
            f"{host.get('contention_prefill', 0.0):.2f}, decode "
            f"{host.get('contention_decode', 0.0):.2f}")
    transfer = host.get("measured", {}).get("transfer_contention")
    if transfer:
        used = "simulated" if host.get("contention_transfer") else "not simulated"
        line += (f"; KV transfer +{transfer['contention_transfer']:.2f} while decode steps "
                 f"(median {transfer['busy_ms']:.1f} ms over {transfer['busy']} migrations vs "
                 f"{transfer['idle_ms']:.1f} ms over {transfer['idle']} idle; {used})")
    if host.get("contention_migrate"):
        line += f"; decode steps +{host['contention_migrate']:.2f} while KV lands (simulated)"
    fit = host.get("measured", {}).get("contention_fit")
    if fit and fit.get("method") == "quantiles":
        line += (f"; fitted to the rounds' p50/p90 TTFT and TPOT: squared relative error "
                 f"{fit['loss']:.3f} (without contention {fit['loss_without']:.3f})")
    elif fit:
        real, sim0 = fit["real_log_contrast"], fit["sim_log_contrast_without"]
        nan = float("nan")
        line += "; fitted: real log slowdown busy/idle " + ", ".join(
            f"{k} {real[k]:.2f} (sim without {nan if sim0[k] is None else sim0[k]:.2f})"
            for k in ("prefill", "decode"))
    return [line]


def jitter_lines(host: dict) -> list[str]:
    """How far two calibration replays of one trace disagreed, and the host jitter (when
    fitted or set)."""
    lines = []
    noise = host.get("measured", {}).get("replay_noise")
    if noise:
        lines.append(f"  replay noise: calibration rounds {noise['rounds'][0]} and "
                     f"{noise['rounds'][1]} (same trace): per-request TPOT log-sd "
                     f"{noise['sd']:.3f}, neighbour correlation {noise['rho']:+.2f}")
    if host.get("jitter_sd"):
        line = (f"  jitter: speed log-sd {host['jitter_sd']:.2f}, correlation time "
                f"{host.get('jitter_ms', 1000.0):.0f} ms")
        fit = host.get("measured", {}).get("jitter_fit")
        probe = host.get("measured", {}).get("jitter_probe")
        if probe:
            line += (f"; measured before the servers started (a {probe['unit_ms']:.1f} ms unit "
                     f"of work timed {probe['units']} times: its log-sd {probe['unit_log_sd']:.3f}"
                     f", over {probe['bin_ms']:.0f} ms bins)")
        if fit and "sim" in fit:
            line += (f"; fitted to that pair (simulated pairs: {fit['sim']['sd']:.3f}, "
                     f"{fit['sim']['rho']:+.2f})")
        lines.append(line)
    return lines
