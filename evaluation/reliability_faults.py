"""Fault scenarios on the Ray engine (CPU) for evaluation/reliability_report.py: a worker made to
exit mid-prefill, mid-migration or mid-decode-step, or a KV transfer stalled past the step
timeout (FaultyRayWorker.inject_fault). A batch runs through the fault, then a second batch
checks the engine serves again after the dead instance was re-created."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import ray

from distllm.config import EngineConfig
from distllm.disagg_config import DisaggConfig
from distllm.engine import fault_tolerance, ray_cluster
from distllm.engine.fault_tolerance import ResilientDisaggEngine
from distllm.sampling_params import SamplingParams
from evaluation.reliability_scenarios import ScenarioResult

FAULTS = {  # name -> (disagg kwargs, instance, point, action)
    "prefill_killed_mid_prefill": (dict(num_prefill_instances=2), "prefill-0", "execute_model",
                                   "exit"),
    "prefill_killed_mid_migration": ({}, "prefill-0", "send_kv", "exit"),
    "decode_killed_mid_step": ({}, "decode-0", "execute_model", "exit"),
    "kv_transfer_timeout": ({}, "prefill-0", "send_kv", "hang"),
}
ENGINE_KWARGS = dict(block_size=8, num_kv_blocks=64, max_num_seqs=8, max_model_len=256,
                     max_num_batched_tokens=1024)


def _batch(engine: ResilientDisaggEngine, prefix: str, n: int, max_tokens: int,
           deadline_s: float = 120.0) -> dict[str, tuple[float, str | None, int]]:
    """Run n requests to their end: id -> (answer time, error, output tokens)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i in range(n):
        engine.add_request(f"{prefix}{i}", list(range(5 + i, 30 + 3 * i)), params)
    done: dict[str, tuple[float, str | None, int]] = {}
    end = time.monotonic() + deadline_s
    while engine.has_unfinished_requests() and time.monotonic() < end:
        for o in engine.step():
            if o.finished:
                done[o.request_id] = (time.monotonic(), o.error, len(o.token_ids))
    return done


def run_fault(model: Path, name: str, num_requests: int = 6, max_tokens: int = 12,
              step_timeout_s: float = 3.0, stall_s: float = 5.0) -> ScenarioResult:
    """One fault scenario (see FAULTS) on a fresh engine; Ray must be initialized."""
    disagg, target, point, action = FAULTS[name]
    original = ray_cluster.RemoteRayWorker
    ray_cluster.RemoteRayWorker = fault_tolerance.RemoteFaultyRayWorker
    try:
        engine = ResilientDisaggEngine(EngineConfig.from_kwargs(str(model), **ENGINE_KWARGS),
                                       DisaggConfig(**disagg))
    finally:
        ray_cluster.RemoteRayWorker = original
    engine.disagg = dataclasses.replace(engine.disagg, step_timeout_s=step_timeout_s)
    try:
        inst = next(i for i in engine.instances if i.name == target)
        ray.get(inst.ray.workers[0].inject_fault.remote(point, action, stall_s))
        started = time.monotonic()
        first = _batch(engine, "a", num_requests, max_tokens)
        failed = [t for t, err, _ in first.values() if err]
        second = _batch(engine, "b", num_requests, max_tokens)
        ok_again = [t for t, err, n in second.values() if not err and n == max_tokens]
        used = sum(s["num_blocks"] - s["num_free_blocks"]
                   for s in engine.stats()["instances"].values())
        recovered = len(ok_again) == num_requests and all(i.is_alive for i in engine.instances)
        return ScenarioResult(
            name, f"{target} {action} at {point}", 2 * num_requests,
            len(failed) + engine.num_reruns, recovered,
            time_to_recover_s=round(min(ok_again) - max(failed), 2) if failed and ok_again
            else 0.0 if recovered else None,
            no_response=2 * num_requests - len(first) - len(second), blocks_leaked=used,
            details={"error_answered_within_s": round(max(failed) - started, 2) if failed
                     else None,
                     "errors": sorted({err[:80] for _, err, _ in first.values() if err}),
                     "restarts": [(r.name, round(r.rejoined_s - r.started_s, 2))
                                  for r in engine.restarts],
                     "world_resets": engine.num_world_resets, "reruns": engine.num_reruns,
                     "failed": len(failed)})
    finally:
        engine.shutdown()
