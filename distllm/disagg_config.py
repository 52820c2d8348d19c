"""The Ray-based engine's instances (`DisaggConfig`): prefill/decode (or colocated) instance counts,
their TP x PP, where Ray runs, the decode pull policy and the KV transport (`--kv-transport`);
built from flags or a placement JSON (the flags that the placement does not describe still apply).
Pure Python, like distllm/config.py."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from distllm.config import check_positive_int
from distllm.distributed.transport_select import (  # pure Python: no torch
    KV_TRANSPORTS,
    check_kv_transport,
)

MODES = ("colocated", "disaggregated")
WORKER_RPCS = ("channel", "ray")  # what --worker-rpc accepts


@dataclass(frozen=True)
class DisaggConfig:
    """Instances of the Ray-based engine: how many prefill / decode (or colocated) instances, their
    TP x PP, where Ray runs and the decode pull policy. A placement JSON overrides the flags."""

    mode: str = "disaggregated"  # disaggregated | colocated (instances that do both phases)
    prefill_tp: int = 1
    prefill_pp: int = 1
    decode_tp: int = 1
    decode_pp: int = 1
    num_prefill_instances: int = 1
    num_decode_instances: int = 1  # colocated mode: the number of colocated instances
    affinity: str = "low"  # high: STRICT_PACK each instance's workers; low: PACK
    ray_address: str | None = None  # None: start (or reuse) a local Ray cluster
    prefill_num_kv_blocks: int | None = None  # None: from the cache config
    decode_num_kv_blocks: int | None = None
    # decode pulls a prefilled request only while its migrated-but-waiting requests hold less
    # than this share of its blocks
    decode_pull_threshold: float = 0.5
    step_timeout_s: float = 120.0  # a worker call running longer fails its requests
    num_threads_per_worker: int = 1  # torch threads in each worker process
    # how KV moves between a prefill and a decode worker; auto: gloo on CPU, CUDA IPC on the
    # same GPU, NCCL between GPUs. A forced choice that cannot connect a pair fails at start-up
    kv_transport: str = "auto"
    # decode and colocated instances with pp = 1 schedule a decode step while the previous one
    # runs (the worker feeds it the token it just sampled), so the worker never waits for the
    # driver between steps; off: one step at a time
    async_scheduling: bool = True
    # how steps reach the workers: "channel", a socket per worker (distllm.worker.step_channel;
    # instances with pp = 1), or "ray", a Ray task per worker and step
    worker_rpc: str = "channel"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("prefill_tp", "prefill_pp", "decode_tp", "decode_pp",
                     "num_prefill_instances", "num_decode_instances", "num_threads_per_worker"):
            check_positive_int(name, getattr(self, name))
        for name in ("prefill_num_kv_blocks", "decode_num_kv_blocks"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if self.affinity not in ("high", "low"):
            raise ValueError(f"affinity must be high or low, got {self.affinity!r}")
        if not 0.0 < self.decode_pull_threshold <= 1.0:
            raise ValueError("decode_pull_threshold must be in (0, 1], got "
                             f"{self.decode_pull_threshold}")
        if not self.step_timeout_s > 0:
            raise ValueError(f"step_timeout_s must be > 0, got {self.step_timeout_s}")
        check_kv_transport(self.kv_transport)
        if self.worker_rpc not in WORKER_RPCS:
            raise ValueError(f"worker_rpc (--worker-rpc) must be one of {WORKER_RPCS}, got "
                             f"{self.worker_rpc!r}")

    @classmethod
    def from_placement(cls, path: str, **overrides: Any) -> DisaggConfig:
        """Instances and parallelism from a planner placement JSON (DESIGN.md section 4)."""
        from distllm.placement import load_placement

        p = load_placement(path)
        if p.mode == "colocated":
            c = p.colocated
            kw = dict(decode_tp=c.tp, decode_pp=c.pp, num_decode_instances=c.instances)
        else:
            kw = dict(prefill_tp=p.prefill.tp, prefill_pp=p.prefill.pp,
                      num_prefill_instances=p.prefill.instances, decode_tp=p.decode.tp,
                      decode_pp=p.decode.pp, num_decode_instances=p.decode.instances)
        return cls(mode=p.mode, affinity=p.affinity, **{**kw, **overrides})

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("disaggregation")
        g.add_argument("--mode", default=None, choices=MODES,
                       help="run prefill and decode on separate Ray instances (disaggregated) or "
                            "instances that do both (colocated); unset: one in-process engine")
        for stage in ("prefill", "decode"):
            g.add_argument(f"--{stage}-tp", type=int, default=1, help=f"TP of a {stage} instance")
            g.add_argument(f"--{stage}-pp", type=int, default=1, help=f"PP of a {stage} instance")
            g.add_argument(f"--num-{stage}-instances", type=int, default=1,
                           help=f"number of {stage} instances")
        g.add_argument("--ray-address", default=None, help="join this Ray cluster")
        g.add_argument("--kv-transport", default="auto", choices=KV_TRANSPORTS,
                       help="KV migration transport: auto (shared memory between CPU workers "
                            "on one node, gloo between CPU nodes, CUDA IPC when prefill and "
                            "decode share a GPU, NCCL between GPUs), or force one")
        g.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_false",
                       help="decode one step at a time (default: decode and colocated instances "
                            "with pp=1 schedule the next step while one runs)")
        g.add_argument("--worker-rpc", default="channel", choices=WORKER_RPCS,
                       help="how the driver sends steps to workers: a socket per worker "
                            "(channel; instances with pp=1, others use Ray) or a Ray task per "
                            "step (ray)")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> DisaggConfig | None:
        """None when neither --mode nor --placement asks for the Ray engine.
        NOTE: `--placement` is declared by `distllm serve`; this reads it when present."""
        placement = getattr(ns, "placement", None)
        if placement:
            return cls.from_placement(placement, ray_address=ns.ray_address,
                                      kv_transport=_kv_transport(ns),
                                      async_scheduling=_async_scheduling(ns),
                                      worker_rpc=_worker_rpc(ns))
        if ns.mode is None:
            return None
        return cls(mode=ns.mode, prefill_tp=ns.prefill_tp, prefill_pp=ns.prefill_pp,
                   decode_tp=ns.decode_tp, decode_pp=ns.decode_pp,
                   num_prefill_instances=ns.num_prefill_instances,
                   num_decode_instances=ns.num_decode_instances, ray_address=ns.ray_address,
                   kv_transport=_kv_transport(ns), async_scheduling=_async_scheduling(ns),
                   worker_rpc=_worker_rpc(ns))


def _kv_transport(ns: argparse.Namespace) -> str:
    """NOTE: parsers built before --kv-transport existed lack it: auto."""
    return getattr(ns, "kv_transport", None) or "auto"


def _async_scheduling(ns: argparse.Namespace) -> bool:
    """NOTE: parsers built before --no-async-scheduling existed lack it: on."""
    return getattr(ns, "async_scheduling", True)


def _worker_rpc(ns: argparse.Namespace) -> str:
    """NOTE: parsers built before --worker-rpc existed lack it: channel."""
    return getattr(ns, "worker_rpc", None) or "channel"
