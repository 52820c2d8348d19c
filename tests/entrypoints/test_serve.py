"""`distllm serve` flags: placement files, the server config, and errors that exit with code 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from distllm.entrypoints import serve
from distllm.entrypoints.http_common import ServerConfig


def _placement(tmp_path: Path, **fields: object) -> str:
    path = tmp_path / "placement.json"
    path.write_text(json.dumps({"model": "m", **fields}))
    return str(path)


def test_flags_build_engine_and_server_configs(tiny_model: Path, tmp_path: Path) -> None:
    ns = serve.make_parser().parse_args(["--model", str(tiny_model), "--num-kv-blocks", "16",
                                         "--api-key", "k"])
    assert (ns.host, ns.port) == ("127.0.0.1", 8400)
    assert serve.engine_config_from_args(ns).cache.num_kv_blocks == 16
    server = ServerConfig.from_cli_args(ns)
    assert server.served_model_name == str(tiny_model) and server.api_key == "k"
    ns.placement = _placement(tmp_path, mode="colocated",
                              colocated={"tp": 1, "pp": 1, "instances": 1})
    assert serve.engine_config_from_args(ns).parallel.world_size == 1


def test_disaggregated_placement_is_refused_until_the_engine_exists(tiny_model: Path,
                                                                    tmp_path: Path) -> None:
    placement = _placement(tmp_path, mode="disaggregated", prefill={"tp": 2},
                           decode={"tp": 1})
    ns = serve.make_parser().parse_args(["--model", str(tiny_model), "--placement", placement])
    with pytest.raises(ValueError, match="colocated"):
        serve.engine_config_from_args(ns)
    assert serve.main(["--model", str(tiny_model), "--placement", placement]) == 2


def test_server_config_validates() -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        ServerConfig(max_body_bytes=0)
    with pytest.raises(ValueError, match="served_model_name"):
        ServerConfig(served_model_name="")
