"""CUDA IPC KV transport pieces that run on CPU: the JSON handle encoding (no pickle), the
same-GPU peer selection, and routing of other peers to the fallback transport."""
from __future__ import annotations

import base64

import pytest
import torch

from distllm.distributed import cuda_ipc_transport as ipc

RECORDED: dict = {}


def fake_rebuild(tensor_cls, tensor_size, tensor_stride, tensor_offset, storage_cls,  # noqa: ANN001, ANN201
                 dtype, storage_device, storage_handle, storage_size_bytes,
                 storage_offset_bytes, requires_grad, ref_counter_handle, ref_counter_offset,
                 event_handle, event_sync_required):
    RECORDED.clear()
    RECORDED.update(locals())
    return torch.zeros(tensor_size, dtype=dtype)


def _reduced() -> tuple:
    args = (torch.Tensor, torch.Size([2, 3, 4]), (12, 4, 1), 0, torch.TypedStorage,
            torch.bfloat16, 0, b"\x00\xffhandle", 4096, 512, False, b"/torch_123_ref", 7,
            b"\x01event", True)
    return fake_rebuild, args


def test_handle_round_trips_through_json() -> None:
    data = ipc.encode_handle(_reduced())
    assert b"TypedStorage" in data and base64.b64encode(b"\x00\xffhandle") in data
    out = ipc.decode_handle(data, torch.bfloat16, rebuild=fake_rebuild)
    assert out.shape == (2, 3, 4) and out.dtype == torch.bfloat16
    _, args = _reduced()
    names = ["tensor_cls", "tensor_size", "tensor_stride", "tensor_offset", "storage_cls",
             "dtype", "storage_device", "storage_handle", "storage_size_bytes",
             "storage_offset_bytes", "requires_grad", "ref_counter_handle",
             "ref_counter_offset", "event_handle", "event_sync_required"]
    for name, want in zip(names, args, strict=True):
        got = RECORDED[name]
        assert (tuple(got) if name == "tensor_size" else got) == want, name


def test_unknown_storage_class_is_refused() -> None:
    data = ipc.encode_handle(_reduced()).replace(b"TypedStorage", b"os.system")
    with pytest.raises(ValueError, match="storage class"):
        ipc.decode_handle(data, torch.float16, rebuild=fake_rebuild)


class RecordingTransport(ipc.KVTransport):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def send(self, slab: torch.Tensor, dst_rank: int) -> None:
        self.calls.append(("send", dst_rank))

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src_rank: int) -> torch.Tensor:
        self.calls.append(("recv", src_rank))
        return torch.zeros(shape, dtype=dtype)


def test_peers_on_other_gpus_use_the_fallback() -> None:
    fallback = RecordingTransport()
    transport = ipc.CudaIpcSlabTransport(fallback, {1}, torch.device("cpu"))
    transport.send(torch.zeros(2), 2)
    assert transport.recv((2, 1), torch.float16, 3).shape == (2, 1)
    assert fallback.calls == [("send", 2), ("recv", 3)]
