"""Same-node CPU KV transport: the prefill worker copies a slab into a shared-memory segment under
/dev/shm that it keeps per decode peer, and sends only a small header of ints over the gloo world
group; the decode worker maps the segment (once), copies the slab out and acks, and only then may
the sender reuse the segment. A migration (`send_blocks`/`recv_blocks`) gathers the cache blocks
straight into the segment and scatters them straight out of it: one copy on each side. Peers on
other nodes go through the fallback transport (gloo), and so does a slab no segment can be had
for (/dev/shm full, or over `max_segment_bytes`): its header says so (seq -1) and its bytes
follow over the fallback before the ack.

    sender                                   receiver
    segment fits? else create a bigger one
    copy slab into the segment
    send header [nbytes, pid, seq, dtype,    recv header; map /dev/shm/distllm-kv-<pid>-<seq>
                 ndim, shape...]       --->  (cached per peer), check shape and dtype,
                                             copy out
    recv [ack]; first ack of the segment <--- send [ack] (0: rejected, the sender raises too)
    -> unlink its file (mappings stay)

NOTE: only int64 tensors travel and the segment name is built from ints: nothing from a peer is
unpickled and no peer-chosen path is opened.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import mmap
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from distllm.distributed.kv_transport import (
    KVCaches,
    KVTransport,
    blocks_slab_shape,
    gather_slab,
    scatter_slab,
)

logger = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
SEGMENT_PREFIX = "distllm-kv"
MIN_SEGMENT_BYTES = 1 << 20
MAX_NDIM = 8
_HEADER_LEN = 5 + MAX_NDIM  # nbytes, pid, seq, dtype code, ndim, shape padded with 0
_DTYPES = tuple(d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                            torch.uint8, torch.int8, torch.int32, torch.int64,
                            getattr(torch, "float8_e4m3fn", None),
                            getattr(torch, "float8_e5m2", None)) if d is not None)
_VIA_FALLBACK = -1  # header seq of a slab that follows over the fallback (no room in /dev/shm)
_SEQ = itertools.count()  # NOTE: segment numbers unique within this process (several transports)


def segment_path(pid: int, seq: int) -> str:
    """Where the segment `seq` of process `pid` lives (built from ints only)."""
    return os.path.join(SHM_DIR, f"{SEGMENT_PREFIX}-{int(pid)}-{int(seq)}")


def is_shm_usable(directory: str = SHM_DIR) -> bool:
    """Shared memory between processes of this node works: `directory` exists and is writable."""
    return os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)


def sweep_stale_segments(directory: str = SHM_DIR) -> list[str]:
    """Unlink the segment files of processes that no longer run (a sender killed between creating
    a segment and its first ack); returns their names."""
    removed = []
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        parts = name.split("-")
        if not name.startswith(SEGMENT_PREFIX + "-") or len(parts) != 4 or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except FileNotFoundError:
                pass
        except PermissionError:  # NOTE: alive, another user's
            continue
    return removed


def _close_all(*segments: dict[int, _Segment]) -> None:
    for by_rank in segments:
        for segment in by_rank.values():
            segment.close()
        by_rank.clear()


@dataclass
class _Segment:
    """One mapped segment and a uint8 view of it."""

    seq: int
    path: str
    mem: mmap.mmap
    view: torch.Tensor  # [capacity], uint8, cpu, shares the mapping
    is_linked: bool = True  # its file still exists under /dev/shm

    def close(self) -> None:
        self.unlink()
        self.view = torch.empty(0, dtype=torch.uint8)
        try:
            self.mem.close()
        except BufferError:  # NOTE: a view is still alive somewhere; GC unmaps it later
            logger.debug("shm segment %s still viewed; left to the GC", self.path)

    def unlink(self) -> None:
        if self.is_linked:
            self.is_linked = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _map(path: str, size: int, create: bool) -> _Segment:
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if create:
            os.ftruncate(fd, size)
            # NOTE: reserve the pages now: a full /dev/shm fails here (ENOSPC), not with a
            # SIGBUS at the first write
            os.posix_fallocate(fd, 0, size)
        else:
            size = os.fstat(fd).st_size
        mem = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    view = torch.frombuffer(mem, dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
    return _Segment(-1, path, mem, view)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """[nbytes] uint8 view of a contiguous tensor."""
    flat = t.reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)


def _typed(buffer: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The first bytes of a uint8 `buffer` as a contiguous `shape` `dtype` tensor (a view)."""
    return buffer[:math.prod(shape) * dtype.itemsize].view(dtype).view(shape)


def _header(nbytes: int, seq: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if len(shape) > MAX_NDIM or dtype not in _DTYPES:
        raise ValueError(f"shm KV transport: slab {tuple(shape)} {dtype} not supported "
                         f"(at most {MAX_NDIM} dims, dtypes {_DTYPES})")
    pad = [0] * (MAX_NDIM - len(shape))
    return torch.tensor([nbytes, os.getpid(), seq, _DTYPES.index(dtype), len(shape),
                         *shape, *pad], dtype=torch.int64)


class ShmSlabTransport(KVTransport):
    """KV slabs between CPU workers: shared memory with the peers on this node, `fallback`
    otherwise (and for a slab /dev/shm has no room for).

    Args:
        fallback: transport for the other peers (gloo).
        local_peers: global ranks on this worker's node.
        group: the gloo process group the headers and acks use (None: world).
        max_segment_bytes: the largest staging segment per peer (None: as /dev/shm allows).
    """

    def __init__(self, fallback: KVTransport, local_peers: set[int], group: Any = None,
                 max_segment_bytes: int | None = None) -> None:
        self.fallback, self.local_peers, self.group = fallback, local_peers, group
        self.max_segment_bytes = max_segment_bytes
        self._staging: dict[int, _Segment] = {}  # dst rank -> the segment slabs to it go through
        self._mapped: dict[int, _Segment] = {}  # src rank -> its segment, mapped here
        # NOTE: one lock per direction: a worker sending and receiving at once cannot deadlock
        self._send_lock, self._recv_lock = threading.Lock(), threading.Lock()
        # NOTE: runs on close(), when the transport is collected (a rebuilt world) or at exit
        self._finalizer = weakref.finalize(self, _close_all, self._staging, self._mapped)
        sweep_stale_segments()

    def send(self, slab: torch.Tensor, dst_rank: int) -> None:
        if dst_rank not in self.local_peers:
            self.fallback.send(slab, dst_rank)
            return
        slab = slab.detach().cpu().contiguous()
        self._send(slab.dtype, tuple(slab.shape), lambda out: out.copy_(slab), dst_rank)

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src_rank: int) -> torch.Tensor:
        if src_rank not in self.local_peers:
            return self.fallback.recv(shape, dtype, src_rank)
        out = torch.empty(shape, dtype=dtype)
        self._recv(tuple(shape), dtype, src_rank, out.copy_)
        return out

    def send_blocks(self, caches: KVCaches, block_ids: list[int], layers: tuple[int, int],
                    heads: tuple[int, int], dst_rank: int) -> None:
        """Gathers the blocks straight into the staging segment (one copy)."""
        if dst_rank not in self.local_peers or caches[0][0].device.type != "cpu":
            self.fallback.send_blocks(caches, block_ids, layers, heads, dst_rank)
            return
        shape = blocks_slab_shape(caches, len(block_ids), layers, heads)
        self._send(caches[0][0].dtype, shape,
                   lambda out: gather_slab(caches, block_ids, layers, heads, out=out), dst_rank)

    def recv_blocks(self, caches: KVCaches, block_ids: list[int], layers: tuple[int, int],
                    heads: tuple[int, int], src_rank: int) -> int:
        """Scatters the blocks straight from the peer's segment (one copy)."""
        if src_rank not in self.local_peers or caches[0][0].device.type != "cpu":
            return self.fallback.recv_blocks(caches, block_ids, layers, heads, src_rank)
        shape = blocks_slab_shape(caches, len(block_ids), layers, heads)
        dtype = caches[0][0].dtype
        self._recv(shape, dtype, src_rank,
                   lambda slab: scatter_slab(caches, block_ids, layers, heads, slab))
        return math.prod(shape) * dtype.itemsize

    def _send(self, dtype: torch.dtype, shape: tuple[int, ...],
              fill: Callable[[torch.Tensor], Any], dst_rank: int) -> None:
        """`fill(slab)` writes the slab into the staging segment (or, when no segment can be
        had, into a buffer that goes over the fallback); waits for the peer's ack."""
        import torch.distributed as dist

        nbytes = math.prod(shape) * dtype.itemsize
        header = _header(nbytes, _VIA_FALLBACK, dtype, shape)
        with self._send_lock:
            segment = self._staging_for(dst_rank, nbytes)
            if segment is not None:
                fill(_typed(segment.view, dtype, shape))
                header[2] = segment.seq
            dist.send(header, dst_rank, self.group)
            if segment is None:
                data = torch.empty(shape, dtype=dtype)
                fill(data)
                self.fallback.send(_as_bytes(data), dst_rank)
            ack = torch.zeros(1, dtype=torch.int64)
            dist.recv(ack, dst_rank, self.group)
            if segment is not None:
                segment.unlink()  # NOTE: the peer has it mapped now (or refused it): no leak
        if ack.item() != 1:
            raise RuntimeError(f"shm KV transport: rank {dst_rank} rejected a slab of shape "
                               f"{tuple(shape)} {dtype} (it expected another)")

    def _recv(self, shape: tuple[int, ...], dtype: torch.dtype, src_rank: int,
              consume: Callable[[torch.Tensor], Any]) -> None:
        """`consume(slab)` reads the slab the peer sent (a view of its segment, valid only
        during the call); then the peer gets its ack."""
        import torch.distributed as dist

        header = torch.zeros(_HEADER_LEN, dtype=torch.int64)
        dist.recv(header, src_rank, self.group)
        fields = header.tolist()
        try:
            with self._recv_lock:
                if fields[2] == _VIA_FALLBACK:  # NOTE: received before any check: framing
                    data = self.fallback.recv((max(0, fields[0]),), torch.uint8, src_rank)
                    self._check(fields, shape, dtype, src_rank)
                    consume(_typed(data, dtype, shape))
                else:
                    consume(self._segment_slab(fields, shape, dtype, src_rank))
        except Exception:
            dist.send(torch.zeros(1, dtype=torch.int64), src_rank, self.group)
            raise
        dist.send(torch.ones(1, dtype=torch.int64), src_rank, self.group)

    def close(self) -> None:
        """Unmap every segment and unlink the files still there (idempotent)."""
        with self._send_lock, self._recv_lock:
            self._finalizer()

    def _staging_for(self, dst_rank: int, nbytes: int) -> _Segment | None:
        """The staging segment to `dst_rank`, re-created bigger when `nbytes` do not fit; None
        when no segment that big can be had (the slab goes through the fallback)."""
        segment = self._staging.get(dst_rank)
        if segment is not None and segment.view.numel() >= nbytes:
            return segment
        cap = self.max_segment_bytes if self.max_segment_bytes is not None else 1 << 62
        if nbytes > cap:
            return None
        old = self._staging.pop(dst_rank).view.numel() if segment is not None else 0
        if segment is not None:
            segment.close()
        size = max(min(max(MIN_SEGMENT_BYTES, 2 * old), cap), nbytes)
        size = -(-max(size, 1) // mmap.PAGESIZE) * mmap.PAGESIZE
        seq = next(_SEQ)
        path = segment_path(os.getpid(), seq)
        try:
            segment = _map(path, size, create=True)
        except OSError as e:
            logger.warning("shm staging to rank %d: no %d-byte segment (%s); via the fallback",
                           dst_rank, size, e)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return None
        segment.seq = seq
        self._staging[dst_rank] = segment
        logger.debug("shm staging to rank %d: %s, %d bytes", dst_rank, path, size)
        return segment

    @staticmethod
    def _check(header: list[int], shape: tuple[int, ...], dtype: torch.dtype,
               src_rank: int) -> None:
        """RuntimeError when the header describes another slab than `shape` `dtype`."""
        nbytes, code, ndim = header[0], header[3], header[4]
        sent_shape = tuple(header[5:5 + ndim]) if 0 <= ndim <= MAX_NDIM else None
        sent_dtype = _DTYPES[code] if 0 <= code < len(_DTYPES) else None
        expected = math.prod(shape) * dtype.itemsize
        if sent_shape != tuple(shape) or sent_dtype != dtype or nbytes != expected:
            raise RuntimeError(f"shm KV transport: rank {src_rank} sent a slab of shape "
                               f"{sent_shape} {sent_dtype} ({nbytes} bytes), expected "
                               f"{tuple(shape)} {dtype} ({expected} bytes)")

    def _segment_slab(self, header: list[int], shape: tuple[int, ...], dtype: torch.dtype,
                      src_rank: int) -> torch.Tensor:
        """The slab in the peer's segment (mapped once per segment), as a `shape` view."""
        self._check(header, shape, dtype, src_rank)
        nbytes, pid, seq = header[:3]
        segment = self._mapped.get(src_rank)
        if segment is None or segment.path != segment_path(pid, seq):
            if segment is not None:
                self._mapped.pop(src_rank).close()
            segment = _map(segment_path(pid, seq), 0, create=False)
            segment.is_linked = False  # NOTE: the sender owns (and unlinks) the file
            self._mapped[src_rank] = segment
        if segment.view.numel() < nbytes:
            raise RuntimeError(f"shm KV transport: segment {segment.path} from rank {src_rank} "
                               f"holds {segment.view.numel()} bytes, the slab {nbytes}")
        return _typed(segment.view, dtype, shape)
