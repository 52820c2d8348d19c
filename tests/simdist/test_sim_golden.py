"""Seeded reproducibility and the checked-in golden trace (regenerate with
`python tests/simdist/test_sim_golden.py` after an intended behaviour change)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from simdist.cluster import ClusterSpec, InstanceSpec, SchedulerSpec, simulate
from simdist.profile import load_profile
from simdist.workload import make_workload

GOLDEN = Path(__file__).parent / "golden" / "trace_opt13b.json"
SPECS = {
    "1p_tp2+2d_tp1": ClusterSpec("opt-13b", (InstanceSpec("prefill", 2), InstanceSpec("decode"),
                                             InstanceSpec("decode"))),
    "colocated_tp2": ClusterSpec("opt-13b", (InstanceSpec("colocated", 2),)),
    "chunked_tp2": ClusterSpec("opt-13b", (InstanceSpec("colocated", 2),),
                               SchedulerSpec(chunk_tokens=512)),
}


def compute_trace() -> dict:
    prof = load_profile("distserve-a100")
    wl = make_workload("sharegpt", 12, seed=7, arrival="gamma", cv=2.0)
    out = {}
    for name, spec in SPECS.items():
        trace: list = []
        res = simulate(spec, prof, wl, 4.0, trace=trace)
        out[name] = {"events": [list(e) for e in trace],
                     "requests": [{"lifecycle": r.lifetime().to_json(),
                                   "tokens": _tokens(r.token_timestamps())}
                                  for r in res.requests]}
    return out


def _tokens(ts: list[float]) -> dict:
    return {"count": len(ts), "first": ts[0], "last": ts[-1], "sum": sum(ts)}


def test_golden_trace_matches() -> None:
    golden = json.loads(GOLDEN.read_text())
    now = json.loads(json.dumps(compute_trace()))
    for name in SPECS:
        assert now[name]["events"] == golden[name]["events"], name
        assert now[name]["requests"] == golden[name]["requests"], name


def test_same_seed_same_records_other_seed_differs() -> None:
    prof = load_profile("distserve-a100")
    spec = SPECS["1p_tp2+2d_tp1"]

    def run(seed: int) -> list:
        wl = make_workload("sharegpt", 200, seed=seed)
        return [r.to_json() for r in simulate(spec, prof, wl, 5.0).records()]

    assert run(3) == run(3)
    assert run(3) != run(4)


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(compute_trace(), separators=(",", ":")) + "\n")
    sys.stdout.write(f"wrote {GOLDEN}\n")
