"""Reliability report: fault, overload and soak scenarios, one table and a JSON file.

    python -m evaluation.reliability_report [--model DIR] [--soak-requests 5000]
        [--concurrency 64] [--faults all|none|name,...] [--json out/reliability.json]

Columns: scenario, injected, requests, affected, recovered, time to recover, requests without
a response (must be 0), KV blocks leaked (must be 0). Exit code 1 when any row breaks those two
rules or did not recover. Without --model a tiny random Llama is written to a temp dir.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distllm.config import EngineConfig
from distllm.engine.async_llm import AsyncLLM
from evaluation.reliability_scenarios import (
    Ledger,
    ScenarioResult,
    loopback_server,
    overload,
    soak,
)

logger = logging.getLogger(__name__)
HEADER = ("scenario", "injected", "requests", "affected", "recovered", "recover_s",
          "no_response", "blocks_leaked")


def _colocated(model: Path, max_queued: int | None) -> AsyncLLM:
    config = EngineConfig.from_kwargs(str(model), num_kv_blocks=256, block_size=8,
                                      max_num_seqs=32, max_model_len=256)
    return AsyncLLM.from_engine_config(config, max_queued_requests=max_queued)


def run_soak(model: Path, num_requests: int, concurrency: int, seed: int = 0,
             disconnect_p: float = 0.3) -> ScenarioResult:
    engine = _colocated(model, None)
    ledger = Ledger(engine)
    try:
        with loopback_server(engine) as url:
            result = asyncio.run(soak(url, ledger, num_requests, concurrency, seed,
                                      disconnect_p))
    finally:
        engine.shutdown()
    violations = result.details["ledger_violations"]
    result.no_response += len(violations)  # a request not ended exactly once counts too
    return result


def run_overload(model: Path, burst: int = 200, max_queued: int = 8) -> ScenarioResult:
    engine = _colocated(model, max_queued)
    try:
        with loopback_server(engine) as url:
            return asyncio.run(overload(url, burst, engine.kv_capacity_tokens or 0))
    finally:
        engine.shutdown()


def run_faults(model: Path, names: list[str]) -> list[ScenarioResult]:
    import ray

    from evaluation.reliability_faults import run_fault

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    try:
        return [run_fault(model, name) for name in names]
    finally:
        if started:
            ray.shutdown()


def format_table(rows: list[ScenarioResult]) -> str:
    cells = [HEADER] + [(r.scenario, r.injected, str(r.num_requests), str(r.affected),
                         "yes" if r.recovered else "NO",
                         "-" if r.time_to_recover_s is None else f"{r.time_to_recover_s:.2f}",
                         str(r.no_response), str(r.blocks_leaked)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     for row in cells)


def passed(rows: list[ScenarioResult]) -> bool:
    return all(r.recovered and r.no_response == 0 and r.blocks_leaked == 0 for r in rows)


def make_parser() -> argparse.ArgumentParser:
    from evaluation.reliability_faults import FAULTS

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model dir (default: a tiny random Llama)")
    p.add_argument("--soak-requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--burst", type=int, default=200, help="overload burst size")
    p.add_argument("--faults", default="all",
                   help=f"all | none | comma-separated from {','.join(FAULTS)}")
    p.add_argument("--json", default="out/reliability.json", help="JSON output path")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    from evaluation.reliability_faults import FAULTS

    ns = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(ns.model) if ns.model else _tiny_model(Path(tmp))
        names = {"all": list(FAULTS), "none": []}.get(ns.faults, ns.faults.split(","))
        rows = run_faults(model, names) if names else []
        rows.append(run_overload(model, ns.burst))
        rows.append(run_soak(model, ns.soak_requests, ns.concurrency, ns.seed))
    table = format_table(rows)
    print(table)  # noqa: T201 - the report's output
    out = Path(ns.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"passed": passed(rows), "rows": [r.to_json() for r in rows]},
                              indent=2) + "\n")
    return 0 if passed(rows) else 1


def _tiny_model(tmp: Path) -> Path:
    from distllm.testing import make_tiny_model

    return make_tiny_model(tmp / "tiny-llama", arch="llama", seed=0)


if __name__ == "__main__":
    sys.exit(main())
