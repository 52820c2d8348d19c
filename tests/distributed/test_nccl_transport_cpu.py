"""The NCCL transport's code (2-rank pair groups built by `process_groups.build_transport` from a
`TransportPlan`, every rank creating every group in the plan's order) moves the right slabs:
run on CPU over gloo pair groups, 2 prefill TP ranks -> 1 decode rank."""
from __future__ import annotations

import pytest

from distllm.distributed.transport_select import TransportPlan, WorkerLocation, plan_transports
from tests.distributed.kv_world import KVWorld, run_world

CPU3 = ("cpu", "cpu", "cpu")


def _gpus(*uuids: str) -> list[WorkerLocation]:
    return [WorkerLocation("node-0", "cuda", u) for u in uuids]


@pytest.mark.parametrize("plan, want", [
    # every pair on its own GPU: both prefill ranks send over their NCCL pair group
    (plan_transports([(0, 2), (1, 2)], _gpus("GPU-a", "GPU-b", "GPU-c")),
     {0: {2: "nccl"}, 1: {2: "nccl"}, 2: {0: "nccl", 1: "nccl"}}),
    # one pair group (rank 1 creates it too, without being in it); rank 1 goes through the world
    (TransportPlan(routes=(((0, 2), "nccl"), ((1, 2), "gloo")), nccl_pairs=((0, 2),)),
     {0: {2: "nccl"}, 1: {2: "gloo"}, 2: {0: "nccl", 1: "gloo"}}),
], ids=["all-nccl", "nccl-and-gloo"])
def test_pair_group_transport_moves_the_right_slabs(plan: TransportPlan, want: dict) -> None:
    out = run_world(KVWorld(plan=plan, devices=CPU3))
    assert all("error" not in o for o in out.values()), out
    assert {r: o["routes"] for r, o in out.items()} == want
    assert out[2]["ok"], "the decode rank's cache differs from the prefill KV it should hold"


def test_nccl_transport_refuses_a_peer_outside_the_plan() -> None:
    import torch

    from distllm.distributed.kv_transport import NcclTransport

    transport = NcclTransport({}, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="not in the transport plan"):
        transport.send(torch.zeros(2), 3)


class RecordingTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def send(self, slab: object, dst_rank: int) -> None:
        self.calls.append(("send", dst_rank))

    def recv(self, shape: tuple[int, ...], dtype: object, src_rank: int) -> object:
        import torch

        self.calls.append(("recv", src_rank))
        return torch.ones(shape)


def test_warm_up_follows_the_plan_order() -> None:
    import torch

    from distllm.distributed.process_groups import warm_up_pairs

    pairs = ((0, 2), (0, 3), (1, 2), (2, 3))
    calls = {}
    for rank in range(4):
        transport = RecordingTransport()
        warm_up_pairs(pairs, rank, transport, torch.device("cpu"))  # type: ignore[arg-type]
        calls[rank] = transport.calls
    assert calls[2] == [("recv", 0), ("recv", 1), ("send", 3)]
    assert calls[0] == [("send", 2), ("send", 3)] and calls[3] == [("recv", 0), ("recv", 2)]
