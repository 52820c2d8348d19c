"""KV migration: which (layer range x KV-head range) slab each decode worker receives from each
prefill worker (`plan_migration`, pure Python), packing/unpacking slabs of paged caches, and the
transports behind one interface: gloo (world group; CPU, or GPU through host memory), NCCL (one
2-rank group per GPU pair; its code is tested over gloo pair groups on CPU), per-peer routing.
CUDA IPC lives in cuda_ipc_transport.py; which pair uses which: transport_select.py.

Worker index inside an instance: `pp_rank * tp + tp_rank`. A TP rank holds the KV heads
`kv_head_range(num_kv_heads, tp_rank, tp)` (replicated when there are fewer KV heads than ranks)
of the layers `pp_layer_range(num_layers, pp_rank, pp)`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from distllm.distributed.parallel_info import pp_layer_range

# layer index -> (key_cache, value_cache), each [num_blocks, num_kv_heads, block_size, head_dim]
KVCaches = list[tuple[torch.Tensor, torch.Tensor]]


def kv_head_range(num_kv_heads: int, tp_rank: int, tp_size: int) -> tuple[int, int]:
    """[start, end) of the global KV heads TP rank `tp_rank` caches (QKVParallelLinear's split)."""
    start = tp_rank * num_kv_heads // tp_size
    return start, start + max(1, num_kv_heads // tp_size)


@dataclass(frozen=True)
class SlabTransfer:
    """Prefill worker `src` sends decode worker `dst` the KV of global layers [layers) and global
    KV heads [heads) for the migrated blocks."""

    src: int  # worker index in the prefill instance
    dst: int  # worker index in the decode instance
    layers: tuple[int, int]
    heads: tuple[int, int]


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else None


def plan_migration(num_layers: int, num_kv_heads: int, src_tp: int, src_pp: int, dst_tp: int,
                   dst_pp: int) -> list[SlabTransfer]:
    """Every slab a decode worker needs, each from the first prefill worker holding it, sorted by
    (src, dst). NOTE: both sides run their parts in this order, so concurrent migrations on
    blocking point-to-point transports cannot deadlock."""
    transfers = []
    for dst in range(dst_tp * dst_pp):
        d_layers = pp_layer_range(num_layers, dst // dst_tp, dst_pp)
        d_heads = kv_head_range(num_kv_heads, dst % dst_tp, dst_tp)
        for src_pp_rank in range(src_pp):
            layers = _overlap(d_layers, pp_layer_range(num_layers, src_pp_rank, src_pp))
            if layers is None:
                continue
            covered = d_heads[0]
            for src_tp_rank in range(src_tp):  # NOTE: replicas: only the first holder sends
                heads = _overlap((covered, d_heads[1]),
                                 kv_head_range(num_kv_heads, src_tp_rank, src_tp))
                if heads is not None and heads[0] == covered:
                    transfers.append(SlabTransfer(src_pp_rank * src_tp + src_tp_rank, dst,
                                                  layers, heads))
                    covered = heads[1]
    return sorted(transfers, key=lambda t: (t.src, t.dst, t.layers, t.heads))


def gather_slab(caches: KVCaches, block_ids: list[int], layers: tuple[int, int],
                heads: tuple[int, int], out: torch.Tensor | None = None) -> torch.Tensor:
    """[2, num_layers, num_blocks, num_heads, block_size, head_dim] copy of the given local layer
    and local head ranges of `block_ids`, written into `out` (contiguous, that shape) when given:
    one copy per layer and side, no temporaries."""
    k0 = caches[0][0]
    index = torch.tensor(block_ids, dtype=torch.int64, device=k0.device)
    if out is None:
        out = torch.empty(blocks_slab_shape(caches, len(block_ids), layers, heads),
                          dtype=k0.dtype, device=k0.device)
    for i, (k, v) in enumerate(caches[layers[0]:layers[1]]):
        torch.index_select(k[:, heads[0]:heads[1]], 0, index, out=out[0, i])
        torch.index_select(v[:, heads[0]:heads[1]], 0, index, out=out[1, i])
    return out


def scatter_slab(caches: KVCaches, block_ids: list[int], layers: tuple[int, int],
                 heads: tuple[int, int], slab: torch.Tensor) -> None:
    """Write `slab` ([2, num_layers, num_blocks, num_heads, block_size, head_dim]) into the
    given local layer and head ranges of `block_ids`."""
    index = torch.tensor(block_ids, dtype=torch.int64, device=caches[0][0].device)
    for i, (k, v) in enumerate(caches[layers[0]:layers[1]]):
        k[:, heads[0]:heads[1]].index_copy_(0, index, slab[0, i].to(k.device))
        v[:, heads[0]:heads[1]].index_copy_(0, index, slab[1, i].to(v.device))


def blocks_slab_shape(caches: KVCaches, num_blocks: int, layers: tuple[int, int],
                      heads: tuple[int, int]) -> tuple[int, ...]:
    """The shape of the slab `gather_slab` makes of `num_blocks` blocks of these ranges."""
    k0 = caches[0][0]
    return slab_shape(layers[1] - layers[0], num_blocks, heads[1] - heads[0], k0.shape[-2],
                      k0.shape[-1])


def slab_shape(num_layers: int, num_blocks: int, num_heads: int, block_size: int,
               head_dim: int) -> tuple[int, ...]:
    return (2, num_layers, num_blocks, num_heads, block_size, head_dim)


class KVTransport(ABC):
    """Moves one slab between two workers identified by their global ranks."""

    @abstractmethod
    def send(self, slab: torch.Tensor, dst_rank: int) -> None:
        """Blocks until the slab may be reused (the prefill side frees blocks after this)."""

    @abstractmethod
    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src_rank: int) -> torch.Tensor:
        """The slab the peer sent, on this worker's device."""

    def send_blocks(self, caches: KVCaches, block_ids: list[int], layers: tuple[int, int],
                    heads: tuple[int, int], dst_rank: int) -> None:
        """Send the slab of `block_ids` (local layer and head ranges) as `send` would; a
        transport that can gather straight into its wire buffer overrides this."""
        self.send(gather_slab(caches, block_ids, layers, heads), dst_rank)

    def recv_blocks(self, caches: KVCaches, block_ids: list[int], layers: tuple[int, int],
                    heads: tuple[int, int], src_rank: int) -> int:
        """Receive the peer's `send_blocks` into `block_ids` of these ranges; returns the bytes.
        A transport that can scatter straight from its wire buffer overrides this."""
        shape = blocks_slab_shape(caches, len(block_ids), layers, heads)
        slab = self.recv(shape, caches[0][0].dtype, src_rank)
        scatter_slab(caches, block_ids, layers, heads, slab)
        return slab.numel() * slab.element_size()


class GlooTransport(KVTransport):
    """torch.distributed point-to-point over a gloo group (CPU tensors)."""

    def __init__(self, group: Any = None) -> None:
        self.group = group  # None: the default (world) group

    def send(self, slab: torch.Tensor, dst_rank: int) -> None:
        import torch.distributed as dist

        dist.send(slab.cpu(), dst=dst_rank, group=self.group)

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src_rank: int) -> torch.Tensor:
        import torch.distributed as dist

        slab = torch.empty(shape, dtype=dtype)
        dist.recv(slab, src=src_rank, group=self.group)
        return slab


class NcclTransport(KVTransport):
    """torch.distributed point-to-point over one 2-rank group per peer: NCCL groups between GPU
    workers on different GPUs or nodes (CUDA tensors, no host staging). The same code runs over
    gloo pair groups on CPU tensors (that is how the CPU tests exercise it).

    Args:
        groups: peer global rank -> the process group of {this rank, peer}.
        device: this worker's device; slabs are sent from and received into it.
    """

    def __init__(self, groups: dict[int, Any], device: torch.device) -> None:
        self.groups, self.device = groups, device

    def send(self, slab: torch.Tensor, dst_rank: int) -> None:
        import torch.distributed as dist

        dist.send(slab.to(self.device), dst=dst_rank, group=self._group(dst_rank))
        self._wait()  # NOTE: the send has completed: the caller may free the blocks

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src_rank: int) -> torch.Tensor:
        import torch.distributed as dist

        slab = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(slab, src=src_rank, group=self._group(src_rank))
        self._wait()
        return slab

    def _group(self, peer: int) -> Any:
        group = self.groups.get(peer)
        if group is None:
            raise RuntimeError(f"no NCCL pair group with rank {peer} (not in the transport plan)")
        return group

    def _wait(self) -> None:
        """NCCL's send/recv only order the current stream after the transfer: wait for it."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()


class RoutedTransport(KVTransport):
    """Per-peer transports: `routes[peer]` for the listed peers, `default` for the others."""

    def __init__(self, routes: dict[int, KVTransport], default: KVTransport) -> None:
        self.routes, self.default = routes, default  # peer global rank -> its transport

    def send(self, slab: torch.Tensor, dst_rank: int) -> None:
        self.routes.get(dst_rank, self.default).send(slab, dst_rank)

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src_rank: int) -> torch.Tensor:
        return self.routes.get(src_rank, self.default).recv(shape, dtype, src_rank)

    def send_blocks(self, caches: KVCaches, block_ids: list[int], layers: tuple[int, int],
                    heads: tuple[int, int], dst_rank: int) -> None:
        self.routes.get(dst_rank, self.default).send_blocks(caches, block_ids, layers, heads,
                                                            dst_rank)

    def recv_blocks(self, caches: KVCaches, block_ids: list[int], layers: tuple[int, int],
                    heads: tuple[int, int], src_rank: int) -> int:
        return self.routes.get(src_rank, self.default).recv_blocks(caches, block_ids, layers,
                                                                   heads, src_rank)


class CudaIpcTransport:
    """Same-node GPU pull: the prefill worker exports its caches once as IPC handles; the decode
    worker opens them and copies the blocks it needs (DistServe's mechanism).
    NOTE: written for GPU nodes; not exercised by the CPU test suite."""

    @staticmethod
    def export_caches(caches: KVCaches) -> list[tuple[Any, Any]]:
        """Picklable handles of every cache tensor (send them to the decode workers once)."""
        if not torch.cuda.is_available():
            raise RuntimeError("the CUDA IPC KV transport needs CUDA")
        from torch.multiprocessing.reductions import reduce_tensor

        return [(reduce_tensor(k), reduce_tensor(v)) for k, v in caches]

    @staticmethod
    def open_caches(handles: list[tuple[Any, Any]]) -> KVCaches:
        def rebuild(handle: Any) -> torch.Tensor:
            fn, args = handle
            return fn(*args)

        return [(rebuild(k), rebuild(v)) for k, v in handles]

    @staticmethod
    def pull(remote: KVCaches, local: KVCaches, src_blocks: list[int], dst_blocks: list[int],
             layers: tuple[tuple[int, int], tuple[int, int]],
             heads: tuple[tuple[int, int], tuple[int, int]]) -> None:
        """Copy blocks from the opened prefill caches; `layers`/`heads` are (remote, local)
        local-index ranges of equal length."""
        slab = gather_slab(remote, src_blocks, layers[0], heads[0])
        scatter_slab(local, dst_blocks, layers[1], heads[1], slab)
        torch.cuda.synchronize()
