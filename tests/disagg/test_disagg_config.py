"""DisaggConfig: validation, CLI flags, placement JSON, and the instances it asks for."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from distllm.config import EngineConfig
from distllm.disagg_config import DisaggConfig
from distllm.engine.disagg_controller import instance_specs


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    DisaggConfig.add_cli_args(parser)
    parser.add_argument("--placement", default=None)  # declared by `distllm serve`
    return parser.parse_args(argv)


def test_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        DisaggConfig(mode="both")
    with pytest.raises(ValueError, match="prefill_tp"):
        DisaggConfig(prefill_tp=0)
    with pytest.raises(ValueError, match="decode_pull_threshold"):
        DisaggConfig(decode_pull_threshold=0.0)


def test_flags_and_placement(tmp_path: Path, tiny_gqa: Path) -> None:
    assert DisaggConfig.from_cli_args(_parse([])) is None  # in-process engine
    d = DisaggConfig.from_cli_args(_parse(["--mode", "disaggregated", "--prefill-tp", "2",
                                           "--num-decode-instances", "3"]))
    assert (d.prefill_tp, d.decode_tp, d.num_decode_instances) == (2, 1, 3)
    placement = {"model": "m", "mode": "disaggregated", "affinity": "high",
                 "prefill": {"tp": 1, "pp": 2, "instances": 2},
                 "decode": {"tp": 2, "pp": 1, "instances": 1}}
    path = tmp_path / "placement.json"
    path.write_text(json.dumps(placement))
    d = DisaggConfig.from_cli_args(_parse(["--placement", str(path), "--prefill-tp", "4"]))
    assert (d.prefill_tp, d.prefill_pp, d.num_prefill_instances) == (1, 2, 2)
    assert (d.decode_tp, d.affinity) == (2, "high")
    config = EngineConfig.from_kwargs(str(tiny_gqa), num_kv_blocks=32, max_model_len=256,
                                      max_num_batched_tokens=256)
    specs = instance_specs(config, DisaggConfig(**{**vars(d), "decode_num_kv_blocks": 8}))
    assert [(k, n, c.parallel.tp, c.parallel.pp, c.cache.num_kv_blocks) for k, n, c in specs] == [
        ("prefill", "prefill-0", 1, 2, 32), ("prefill", "prefill-1", 1, 2, 32),
        ("decode", "decode-0", 2, 1, 8)]
    colocated = instance_specs(config, DisaggConfig(mode="colocated", num_decode_instances=2))
    assert [k for k, _, _ in colocated] == ["colocated", "colocated"]


def test_kv_transport_flag(tmp_path: Path) -> None:
    assert DisaggConfig().kv_transport == "auto"
    with pytest.raises(ValueError, match="--kv-transport must be one of"):
        DisaggConfig(kv_transport="rdma")
    d = DisaggConfig.from_cli_args(_parse(["--mode", "disaggregated", "--kv-transport", "nccl"]))
    assert d.kv_transport == "nccl"
    assert DisaggConfig.from_cli_args(_parse(["--mode", "colocated"])).kv_transport == "auto"
    with pytest.raises(SystemExit):  # argparse refuses an unknown choice
        _parse(["--kv-transport", "tcp"])
    path = tmp_path / "placement.json"
    path.write_text(json.dumps({"model": "m", "mode": "disaggregated",
                                "prefill": {"tp": 1, "pp": 1, "instances": 1},
                                "decode": {"tp": 1, "pp": 1, "instances": 1}}))
    d = DisaggConfig.from_cli_args(_parse(["--placement", str(path), "--kv-transport", "gloo"]))
    assert d.kv_transport == "gloo"  # the placement says where; the flag says how KV moves
    old = argparse.Namespace(placement=None, mode="disaggregated", prefill_tp=1, prefill_pp=1,
                             decode_tp=1, decode_pp=1, num_prefill_instances=1,
                             num_decode_instances=1, ray_address=None)
    assert DisaggConfig.from_cli_args(old).kv_transport == "auto"  # a parser without the flag


def test_async_scheduling_flag(tmp_path: Path) -> None:
    assert DisaggConfig().async_scheduling
    assert DisaggConfig.from_cli_args(_parse(["--mode", "colocated"])).async_scheduling
    d = DisaggConfig.from_cli_args(_parse(["--mode", "disaggregated", "--no-async-scheduling"]))
    assert not d.async_scheduling
    path = tmp_path / "placement.json"
    path.write_text(json.dumps({"model": "m", "mode": "colocated",
                                "colocated": {"tp": 1, "pp": 1, "instances": 2}}))
    d = DisaggConfig.from_cli_args(_parse(["--placement", str(path), "--no-async-scheduling"]))
    assert not d.async_scheduling and d.num_decode_instances == 2


def test_worker_rpc_flag(tmp_path: Path) -> None:
    assert DisaggConfig().worker_rpc == "channel"
    assert DisaggConfig.from_cli_args(_parse(["--mode", "colocated"])).worker_rpc == "channel"
    d = DisaggConfig.from_cli_args(_parse(["--mode", "disaggregated", "--worker-rpc", "ray"]))
    assert d.worker_rpc == "ray"
    path = tmp_path / "placement.json"
    path.write_text(json.dumps({"model": "m", "mode": "colocated",
                                "colocated": {"tp": 1, "pp": 1, "instances": 2}}))
    d = DisaggConfig.from_cli_args(_parse(["--placement", str(path), "--worker-rpc", "ray"]))
    assert d.worker_rpc == "ray" and d.num_decode_instances == 2
    with pytest.raises(SystemExit):  # argparse refuses an unknown choice
        _parse(["--worker-rpc", "zmq"])
    with pytest.raises(ValueError, match="--worker-rpc"):
        DisaggConfig(worker_rpc="zmq")
