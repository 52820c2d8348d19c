"""Which KV transport a (prefill worker, decode worker) pair uses, from where each one runs:
CUDA IPC when both use the same GPU (1P+1D sharing it), gloo otherwise (on GPUs it stages the
slab through host memory; NOTE: an NCCL path for GPU pairs is not wired yet). Pure Python; the
Ray workers apply the same rule in `cuda_ipc_transport.make_cuda_transport`."""
from __future__ import annotations

from dataclasses import dataclass

TRANSPORTS = ("gloo", "cuda_ipc")


@dataclass(frozen=True)
class WorkerLocation:
    """Where one worker runs."""

    node_id: str  # Ray node id (or host name)
    device: str  # "cpu" or "cuda"
    gpu_uuid: str | None = None  # the physical GPU (CUDA_VISIBLE_DEVICES renumbers indices)


def choose_transport(src: WorkerLocation, dst: WorkerLocation) -> str:
    """The transport that moves KV from `src` (prefill) to `dst` (decode)."""
    if src.device != dst.device:
        raise ValueError(f"prefill on {src.device} and decode on {dst.device}: both instances "
                         "must use the same device kind")
    return "cuda_ipc" if is_same_gpu(src, dst) else "gloo"


def is_same_gpu(src: WorkerLocation, dst: WorkerLocation) -> bool:
    """Both workers on one physical GPU (1P+1D sharing it: each instance needs its own
    --gpu-memory-utilization share, and Ray a fractional GPU per worker). NOTE: only then can
    IPC handles be opened: Ray shows each worker just its own GPU."""
    return (src.device == dst.device == "cuda" and src.node_id == dst.node_id
            and src.gpu_uuid is not None and src.gpu_uuid == dst.gpu_uuid)


def local_location(node_id: str, device: str) -> WorkerLocation:
    """This process's location (the CUDA device it uses is the current one)."""
    if device != "cuda":
        return WorkerLocation(node_id, device)
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return WorkerLocation(node_id, device, str(getattr(props, "uuid", props.name)))
