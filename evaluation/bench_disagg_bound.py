"""How far can disaggregation beat colocation on this 2-core CPU at all? simdist replays
evaluation/bench_disagg_cpu.py's registered workload (same generator, rates, request count,
SLO rule and goodput estimator) on a profile of its model, for 1 prefill + 1 decode instance
(one thread each) against 2 colocated instances (one thread each), and reports the goodput
ratio at the tight-TPOT SLO an engine could reach if it added nothing to the profiled steps.

    python evaluation/bench_disagg_bound.py [--profile P.json] [--bench-report R.json ...]
        [--seeds 40] [--ttft-multiples 2.5,2.75,3,3.25,3.5,4] [-o DIR]

Without --profile the bench's model is built and profiled first (`distllm profile`, one
thread, ~1 min). The bench sets the TTFT SLO to 4x the best mode's unloaded prefill of a mean
prompt, and the best mode is the 2-thread colocated instance, so in units of the one-thread
prefill the SLO is 4 / that round's 2-thread speedup: the bound is reported against that
multiple (--ttft-multiples), and each measured round of the --bench-report files is placed on
it (its own multiple and its measured ratio). The TPOT SLO is 2x the simulated unloaded TPOT of
a mean request, as the bench's (the one-thread colocated instance's).

Variants: "ideal" (no host contention, KV moves in no time), "profiled transfer" (the
profile's KV transfer latency and bandwidth, shm's figures by default, no host contention),
and "host" when the profile has a host section (its contention terms). The colocated baseline
is the 2 x 1-thread instance only; the bench's best colocated mode may also be the 2-thread one,
which can only lower the measured ratio, so the figures here stay upper bounds. Writes
bench_disagg_bound.json and .png into -o and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.bench_disagg_cpu import MODEL_SHAPE, workload  # noqa: E402
from evaluation.bench_disagg_report import (  # noqa: E402
    TARGET,
    TPOT_TIGHT,
    TTFT_FACTOR,
    ratios_by_mode,
)

MODEL = "bench"
MODES = {"disaggregated": ("prefill", "decode"), "colocated-2x1": ("colocated", "colocated")}
DEFAULT_RATES = [round(0.25 * k, 2) for k in range(1, 21)]  # 0.25 .. 5 req/s
# the bench's KV transport on one node: shared memory (evaluation/results/
# bench_disagg_cpu_channel*.json: 2.1-4.3 GB/s); the fixed cost: ~5 ms per migration (two
# Ray calls and a gloo handshake, measured with submit_migration of 1 to 64 blocks)
SHM_GB_S, SHM_TRANSFER_MS = 2.14, 5.0


def make_profile(out: Path) -> Path:
    """Build the bench's model and profile it with one thread (`distllm profile`)."""
    from distllm.entrypoints.profile import main as profile_main
    from distllm.testing import make_tiny_model

    model_dir = make_tiny_model(Path(tempfile.mkdtemp()) / "m", arch="llama", seed=0,
                                **MODEL_SHAPE)
    path = out / "profile_bench_model.json"
    rc = profile_main(["--model", str(model_dir), "--threads", "1", "--backend", "inprocess",
                       "--name", MODEL, "--max-model-len", "2048", "--num-kv-blocks", "1024",
                       "--block-size", "16", "-o", str(path)])
    if rc:
        sys.exit(f"distllm profile failed (exit {rc})")
    return path


def variants(profile: dict, transfer_ms: float | None, gb_s: float | None) -> dict:
    """name -> LatencyProfile of each variant (see the module docstring)."""
    from simdist.profile import LatencyProfile

    def variant(transfer: tuple[float, float] | None, host: bool) -> LatencyProfile:
        d = json.loads(json.dumps(profile))
        d.pop("fit", None)
        if not host:
            d.pop("host", None)
        if transfer is not None:
            d.setdefault("overhead", {})["transfer_ms"] = transfer[0]
            d["interconnect"] = {"nvlink_gb_s": transfer[1], "network_gb_s": transfer[1]}
        return LatencyProfile.from_dict(d)

    shm = (SHM_TRANSFER_MS if transfer_ms is None else transfer_ms,
           SHM_GB_S if gb_s is None else gb_s)
    out = {"ideal": variant((0.0, 1e6), False), "profiled transfer": variant(shm, False)}
    if profile.get("host"):
        out["host"] = variant(shm, True)
    return out


def replay(prof, roles: tuple[str, ...], jobs: list) -> list:  # noqa: ANN001
    """RequestRecords of the bench's arrivals `jobs` replayed on one instance per role."""
    from simdist.calibrate import replay_trace
    from simdist.cluster import SchedulerSpec

    # NOTE: the bench's engine: max_num_seqs 64, max_num_batched_tokens 2048, colocated
    # requests routed to the instance with the fewest unfinished ones
    sched = SchedulerSpec(max_prefill_tokens=2048, max_batch_size=64,
                          colocated_routing="requests")
    trace = [{"prompt_len": len(p), "output_len": o, "arrival_s": t} for t, p, o in jobs]
    return replay_trace(trace, roles, prof, MODEL, sched).records()


def unloaded(prof, args: argparse.Namespace) -> tuple[float, float]:  # noqa: ANN001
    """(prefill ms of a mean prompt, TPOT ms of one request alone), as the bench measures them:
    one request of --prompt-len tokens and 32 outputs on a colocated instance."""
    rec = replay(prof, ("colocated",), [(0.0, [5] * args.prompt_len, 32)])[0]
    return rec.ttft * 1e3, rec.tpot * 1e3


def bound(profiles: dict, args: argparse.Namespace) -> dict:
    """Per variant: SLOs, per mode and rate the records' attainment at every TTFT multiple,
    goodputs and ratios."""
    from tqdm import tqdm

    from distllm.metrics import max_rate_meeting, slo_attainment

    out = {}
    total = len(profiles) * len(MODES) * len(args.rates)
    with tqdm(total=total, desc="variants x modes x rates") as bar:
        for name, prof in profiles.items():
            prefill_ms, tpot_ms = unloaded(prof, args)
            slos = {str(k): (k * prefill_ms, TPOT_TIGHT * tpot_ms) for k in args.ttft_multiples}
            rows: dict[str, list] = {}
            for mode, roles in MODES.items():
                rows[mode] = []
                for rate in args.rates:
                    records = [r for s in range(args.seeds)
                               for r in replay(prof, roles, workload(
                                   args.num_requests, rate, args.seed + 1000 * s, args))]
                    rows[mode].append({"rate": rate, "attainment": {
                        k: slo_attainment(records, *slo) for k, slo in slos.items()}})
                    bar.update(1)
            goodput = {k: {m: max_rate_meeting([(r["rate"], r["attainment"][k])
                                                for r in rows[m]], TARGET) for m in MODES}
                       for k in slos}
            out[name] = {"unloaded_ms": {"prefill": prefill_ms, "tpot": tpot_ms},
                         "slo_ms": slos, "rows": rows, "goodput_rps": goodput,
                         "ratio": {k: ratios_by_mode(g)["colocated-2x1"]
                                   for k, g in goodput.items()}}
    return out


def measured_rounds(paths: list[Path]) -> list[dict]:
    """Each round of bench_disagg_cpu reports: its TTFT SLO in units of the disaggregated
    (one-thread) prefill, and its measured tight-SLO ratio."""
    out = []
    for path in paths:
        report = json.loads(Path(path).read_text())
        for k, r in enumerate(report["rounds"]):
            prefill = r["unloaded_ms"]["disaggregated"][0]
            out.append({"report": str(path), "round": k,
                        "ttft_multiple": r["slo_ms"]["tight"][0] / prefill,
                        "ratio": r["goodput_ratio_tight"]})
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def floats(s: str) -> list[float]:
        return [float(x) for x in s.split(",") if x.strip()]

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", type=Path, help="profile of the bench's model (one thread); "
                   "default: build the model and run `distllm profile`")
    p.add_argument("--bench-report", type=Path, nargs="*", default=[],
                   help="bench_disagg_cpu.json files whose rounds are placed on the bound")
    p.add_argument("--seeds", type=int, default=40, help="arrival seeds per rate")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--num-requests", type=int, default=48)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=24)
    p.add_argument("--rates", type=floats, default=DEFAULT_RATES)
    p.add_argument("--ttft-multiples", type=floats, default=[2.5, 2.75, 3.0, 3.25, 3.5, 4.0],
                   help=f"TTFT SLOs in units of the one-thread prefill ({TTFT_FACTOR:g} = no "
                   "2-thread speedup)")
    p.add_argument("--transfer-ms", type=float, help=f"fixed cost per migration "
                   f"(default {SHM_TRANSFER_MS:g})")
    p.add_argument("--transfer-gb-s", type=float, help=f"KV bandwidth (default {SHM_GB_S:g})")
    p.add_argument("-o", "--output-dir", default="out/bench_disagg_bound")
    args = p.parse_args(argv)
    for flag in ("seeds", "num_requests", "prompt_len", "output_len"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if not args.rates or min(args.rates) <= 0:
        p.error("--rates must list positive rates")
    if not args.ttft_multiples or min(args.ttft_multiples) <= 0:
        p.error("--ttft-multiples must list positive multiples")
    for path in [args.profile, *args.bench_report]:
        if path is not None and not path.is_file():
            p.error(f"no such file: {path}")
    return args


def print_table(report: dict) -> None:
    names = list(report["variants"])
    print("TTFT SLO (x 1-thread prefill) | " + " | ".join(
        f"{n}: disagg / coloc-2x1 req/s = ratio" for n in names))
    for k in report["variants"][names[0]]["ratio"]:
        cells = []
        for n in names:
            v = report["variants"][n]
            g = v["goodput_rps"][k]
            cells.append(f"{g['disaggregated']:5.2f} / {g['colocated-2x1']:5.2f} = "
                         f"{v['ratio'][k]:4.2f}")
        print(f"{float(k):29.2f} | " + " | ".join(cells))
    for name, v in report["variants"].items():
        u = v["unloaded_ms"]
        print(f"{name}: unloaded prefill of a mean prompt {u['prefill']:.1f} ms, TPOT "
              f"{u['tpot']:.2f} ms (TPOT SLO {TPOT_TIGHT * u['tpot']:.1f} ms)")
    for m in report["measured"]:
        print(f"measured {m['report']} round {m['round']}: TTFT SLO {m['ttft_multiple']:.2f} x "
              f"1-thread prefill, ratio {m['ratio']:.2f}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, v in report["variants"].items():
        ks = [float(k) for k in v["ratio"]]
        ax.plot(ks, list(v["ratio"].values()), marker="o", label=f"simdist: {name}")
    if report["measured"]:
        ax.scatter([m["ttft_multiple"] for m in report["measured"]],
                   [m["ratio"] for m in report["measured"]], color="k", marker="x", zorder=3,
                   label="measured rounds (bench_disagg_cpu)")
    ax.axhline(1.5, color="r", ls="--", lw=1, label="goal 1.5x")
    ax.axhline(1.0, color="gray", ls=":", lw=1)
    ax.set_xlabel("TTFT SLO / unloaded 1-thread prefill of a mean prompt")
    ax.set_ylabel("goodput ratio, disaggregated / colocated-2x1 (tight TPOT)")
    ax.set_title("1P+1D vs 2 colocated instances on 2 cores: what an engine could reach")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile_path = args.profile or make_profile(out)
    profile = json.loads(profile_path.read_text())
    if MODEL not in profile.get("models", {}):
        sys.exit(f"--profile: {profile_path} has no model {MODEL!r} (profile the bench's model "
                 f"with `--name {MODEL}`)")
    report = {"meta": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                       if k != "bench_report"} | {"profile": str(profile_path),
                                                  "bench_report": list(map(str,
                                                                           args.bench_report))},
              "variants": bound(variants(profile, args.transfer_ms, args.transfer_gb_s), args),
              "measured": measured_rounds(args.bench_report)}
    (out / "bench_disagg_bound.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "bench_disagg_bound.png")
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
