"""The Ray actor of one worker: a `Worker` for one (pp_rank, tp_rank) shard of an instance, its
process groups, and its half of KV migrations (over the transport the driver's `TransportPlan`
assigns each peer: gloo, NCCL or CUDA IPC).

Two concurrency groups, one thread each: "compute" (cache moves and forwards, in submission
order) and "migrate" (KV sends / receives, in submission order). A migration touches only blocks
that no forward uses until it completes, so the two may overlap. With a step channel open
(`open_step_channel`; instances with pp = 1), the forwards arrive over it instead and run on its
thread, still in submission order; "compute" then only loads the model and sizes the cache.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import torch

from distllm.config import EngineConfig
from distllm.core.scheduler_output import ModelRunnerOutput, SchedulerOutput
from distllm.distributed import kv_transport
from distllm.distributed.kv_transport import SlabTransfer
from distllm.distributed.parallel_info import ParallelInfo
from distllm.distributed.transport_select import TransportPlan, WorkerLocation
from distllm.tracing import step_trace

logger = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What the last pipeline stage's TP rank 0 returns for a step."""

    output: ModelRunnerOutput
    # request id -> its seeded generator's state after this step (prefills only), handed to the
    # decode instance with the KV so sampling continues the same random stream
    generator_states: dict[str, torch.Tensor] = field(default_factory=dict)


class RayWorker:
    """Holds one model shard and its KV cache inside a Ray worker process.

    Args:
        config: the instance's engine config (its `parallel` gives tp and pp).
        tp_rank, pp_rank: this worker's coordinates in the instance.
        num_threads: torch intra-op threads of this process.
    """

    def __init__(self, config: EngineConfig, tp_rank: int, pp_rank: int,
                 num_threads: int = 1) -> None:
        torch.set_num_threads(num_threads)
        self.config = config
        self.parallel = ParallelInfo(tp_rank=tp_rank, tp_size=config.parallel.tp,
                                     pp_rank=pp_rank, pp_size=config.parallel.pp)
        self.worker: Any = None  # distllm.worker.worker.Worker, built by load_model
        self.rank = -1  # global rank in the world group
        self.transport: kv_transport.KVTransport | None = None
        self.step_server: Any = None  # distllm.worker.step_channel.StepServer, once opened
        self.trace_label = ""  # the instance's name in the step trace, set with the channel

    def master_address(self) -> tuple[str, int]:
        """(ip, free port) for the world group's store, when this worker is rank 0."""
        from distllm.distributed.process_groups import find_free_port, node_ip

        ip = node_ip()
        return ip, find_free_port("0.0.0.0" if ip != "127.0.0.1" else ip)

    def location(self) -> WorkerLocation:
        """Where this worker runs (node, device, GPU): the driver plans the KV transports."""
        from distllm.distributed.process_groups import node_ip
        from distllm.distributed.transport_select import local_location

        return local_location(node_ip(), self.config.device)

    def init_distributed(self, master_addr: str, master_port: int, rank: int, world_size: int,
                         tp_groups: list[list[int]], plan: TransportPlan | None = None) -> None:
        """Join the world, create the TP and KV pair groups (collective: every rank, same
        arguments) and build the KV transport from `plan` (None: gloo with every peer)."""
        from distllm.distributed.process_groups import build_transport, init_world

        init_world(master_addr, master_port, rank, world_size, tp_groups)
        self.rank = rank
        plan = plan or TransportPlan()
        device = torch.device("cpu")
        if self.config.device == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        self.transport = build_transport(plan, rank, device)
        logger.info("rank %d: KV over shm with %s, NCCL with %s, CUDA IPC with %s, gloo with the "
                    "others", rank, sorted(plan.peers(rank, "shm")),
                    sorted(plan.peers(rank, "nccl")), sorted(plan.peers(rank, "cuda_ipc")))

    def load_model(self) -> tuple[int, int]:
        """Build the shard and load its weights; returns (device, swap) blocks it affords."""
        from distllm.worker.worker import Worker

        self.worker = Worker(self.config, self.parallel)
        return self.worker.determine_num_blocks()

    def init_cache(self, num_blocks: int, num_swap_blocks: int) -> None:
        self.worker.init_cache(num_blocks, num_swap_blocks)

    def execute_model(self, scheduler_output: SchedulerOutput,
                      intermediate: torch.Tensor | StepResult | None = None
                      ) -> StepResult | torch.Tensor | None:
        """One step of this shard. Returns the hidden states on a stage before the last, the
        sampled tokens (+ seeded generator states of the prefills) on TP rank 0 of the last
        stage, None on its other TP ranks."""
        if isinstance(intermediate, StepResult):  # the previous stage had no forward
            intermediate = None
        out = self.worker.execute_model(scheduler_output, intermediate)
        if not isinstance(out, ModelRunnerOutput):
            return out
        if self.parallel.tp_rank != 0:
            return None
        ids = [r.request_id for r in scheduler_output.prefills]
        return StepResult(out, self.worker.runner.generator_states(ids))

    def open_step_channel(self, authkey: bytes, driver_node_id: str | None = None,
                          label: str = "") -> tuple[str, Any]:
        """Listen for the driver's step channel (distllm.worker.step_channel): a Unix socket
        when the driver runs on this node (`driver_node_id`: its Ray node id), TCP on this
        node's address otherwise. Returns (family, address) to connect to."""
        from distllm.distributed.process_groups import node_ip
        from distllm.worker.step_channel import StepServer

        same_node = driver_node_id is None or driver_node_id == _node_id()
        self.trace_label = label
        self.step_server = StepServer(self.execute_model, authkey,
                                      host=None if same_node else node_ip(), label=label)
        return self.step_server.family, self.step_server.address

    def send_kv(self, block_ids: list[int], transfers: list[SlabTransfer],
                dst_ranks: list[int]) -> int:
        """Send this worker's slabs of `block_ids`; `dst_ranks[i]` is the global rank of
        `transfers[i].dst`. Returns 0 (the receivers count the bytes)."""
        for t, dst_rank in zip(transfers, dst_ranks, strict=True):
            self.transport.send_blocks(self._caches(), block_ids, *self._local(t), dst_rank)
        return 0

    def recv_kv(self, block_ids: list[int], transfers: list[SlabTransfer], src_ranks: list[int],
                request_id: str = "", generator_state: torch.Tensor | None = None) -> int:
        """Receive this worker's slabs into `block_ids` (and continue the request's seeded
        random stream from `generator_state`); returns the bytes received."""
        begin = time.monotonic()
        if generator_state is not None:
            self.worker.runner.set_generator_state(request_id, generator_state)
        nbytes = sum(self.transport.recv_blocks(self._caches(), block_ids, *self._local(t),
                                                src_rank)
                     for t, src_rank in zip(transfers, src_ranks, strict=True))
        step_trace("worker").event("kv", self.trace_label, request_id, begin)
        return nbytes

    def flush_trace(self) -> None:
        """Write this worker's buffered step trace events (distllm.tracing)."""
        step_trace("worker").flush()

    def _caches(self) -> kv_transport.KVCaches:
        return self.worker.cache_engine.device_caches

    def _local(self, t: SlabTransfer) -> tuple[tuple[int, int], tuple[int, int]]:
        """The transfer's global layer / head ranges in this worker's cache indices."""
        dims = self.config.model.dims
        layer0 = self.parallel.layer_range(dims.num_layers)[0]
        head0 = kv_transport.kv_head_range(dims.num_kv_heads, self.parallel.tp_rank,
                                           self.parallel.tp_size)[0]
        return ((t.layers[0] - layer0, t.layers[1] - layer0),
                (t.heads[0] - head0, t.heads[1] - head0))

    def shutdown(self) -> None:
        from distllm.distributed.process_groups import destroy_world

        destroy_world()


def _node_id() -> str | None:
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray
        return None


# NOTE: the remote class; the plain class above stays importable and testable without Ray.
RemoteRayWorker = ray.remote(concurrency_groups={"compute": 1, "migrate": 1})(RayWorker)
COMPUTE_METHODS = ("execute_model", "init_cache", "load_model")
MIGRATE_METHODS = ("send_kv", "recv_kv")
