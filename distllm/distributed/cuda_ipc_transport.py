"""Same-node CUDA KV transport: the prefill worker gathers a slab on its GPU and sends only the
slab's CUDA IPC handle (a few hundred bytes of JSON) over the gloo world group; the decode
worker opens it, copies the slab device-to-device and acks, and only then may the sender reuse
the slab. Peers on other GPUs go through the fallback transport (NCCL pair groups, or gloo when
forced; `process_groups.build_transport` wires it from the driver's `TransportPlan`).

    sender                              receiver
    gather slab (GPU), sync stream
    send [len], send handle JSON  --->  recv [len], recv handle JSON, open IPC view
                                        copy to own GPU, sync, drop the view
    recv [ack]                    <---  send [ack]

NOTE: handles travel as JSON (bytes base64-encoded), never pickled: nothing from a peer is
unpickled. Written for GPU nodes; the encoding and the selection are tested on CPU.
"""
from __future__ import annotations

import base64
import inspect
import json
from collections.abc import Callable
from typing import Any

import torch

from distllm.distributed.kv_transport import KVTransport

# NOTE: the parameters of rebuild_cuda_tensor that are not plain JSON values; filled in locally
_LOCAL_ARGS = ("tensor_cls", "storage_cls", "dtype")
_STORAGE_CLASSES = {"TypedStorage": torch.TypedStorage, "UntypedStorage": torch.UntypedStorage}


def encode_handle(reduced: tuple[Callable[..., torch.Tensor], tuple]) -> bytes:
    """JSON of `torch.multiprocessing.reductions.reduce_tensor(cuda_tensor)`'s arguments."""
    fn, args = reduced
    names = list(inspect.signature(fn).parameters)
    out: dict[str, Any] = {}
    for name, value in zip(names, args, strict=True):
        if name == "storage_cls":
            out[name] = value.__name__
        elif name in _LOCAL_ARGS:
            continue
        elif isinstance(value, bytes):
            out[name] = {"b64": base64.b64encode(value).decode()}
        elif isinstance(value, torch.Size | tuple):
            out[name] = list(value)
        elif isinstance(value, torch.device):
            out[name] = value.index
        else:
            out[name] = value
    return json.dumps(out).encode()


def decode_handle(data: bytes, dtype: torch.dtype,
                  rebuild: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """Open the tensor `encode_handle` described (a view on the sender's GPU memory)."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    rebuild = rebuild or rebuild_cuda_tensor
    fields = json.loads(data)
    storage_cls = _STORAGE_CLASSES.get(fields.pop("storage_cls", None))
    if storage_cls is None:
        raise ValueError("CUDA IPC handle names an unknown storage class")
    kwargs: dict[str, Any] = {"tensor_cls": torch.Tensor, "storage_cls": storage_cls,
                              "dtype": dtype}
    for name, value in fields.items():
        if isinstance(value, dict):
            value = base64.b64decode(value["b64"])
        elif name in ("tensor_size", "tensor_stride"):
            value = tuple(value)
        kwargs[name] = value
    return rebuild(**kwargs)


class CudaIpcSlabTransport(KVTransport):
    """KV slabs between GPU workers: CUDA IPC with the peers on this GPU, `fallback` otherwise.

    Args:
        fallback: transport for the other peers (NCCL pair groups; gloo: via host memory).
        local_peers: global ranks on this worker's GPU.
        device: this worker's GPU.
        group: the gloo process group the small messages use (None: world).
    """

    def __init__(self, fallback: KVTransport, local_peers: set[int], device: torch.device,
                 group: Any = None) -> None:
        self.fallback, self.local_peers = fallback, local_peers
        self.device, self.group = device, group

    def send(self, slab: torch.Tensor, dst_rank: int) -> None:
        if dst_rank not in self.local_peers:
            self.fallback.send(slab, dst_rank)
            return
        import torch.distributed as dist
        from torch.multiprocessing.reductions import reduce_tensor

        slab = slab.to(self.device).contiguous()
        torch.cuda.current_stream(self.device).synchronize()  # NOTE: written before it is read
        payload = torch.frombuffer(bytearray(encode_handle(reduce_tensor(slab))),
                                   dtype=torch.uint8)
        dist.send(torch.tensor([payload.numel()], dtype=torch.int64), dst_rank, self.group)
        dist.send(payload, dst_rank, self.group)
        ack = torch.zeros(1, dtype=torch.int64)
        dist.recv(ack, dst_rank, self.group)  # the receiver copied it: the slab may be freed

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src_rank: int) -> torch.Tensor:
        if src_rank not in self.local_peers:
            return self.fallback.recv(shape, dtype, src_rank)
        import torch.distributed as dist

        size = torch.zeros(1, dtype=torch.int64)
        dist.recv(size, src_rank, self.group)
        payload = torch.empty(int(size.item()), dtype=torch.uint8)
        dist.recv(payload, src_rank, self.group)
        remote = decode_handle(payload.numpy().tobytes(), dtype)
        if tuple(remote.shape) != tuple(shape):
            raise RuntimeError(f"CUDA IPC slab of shape {tuple(remote.shape)}, expected {shape}")
        slab = remote.to(self.device, copy=True)  # [2, layers, blocks, heads, block, head_dim]
        torch.cuda.current_stream(self.device).synchronize()
        del remote
        dist.send(torch.ones(1, dtype=torch.int64), src_rank, self.group)
        return slab
