"""`distllm serve` flags: the in-process vs Ray engine choice, placement files, the server
config, and errors that exit with code 2."""
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


def _args(*argv: str) -> object:
    return serve.make_parser().parse_args(list(argv))


def test_flags_build_engine_and_server_configs(tiny_model: Path) -> None:
    ns = _args("--model", str(tiny_model), "--num-kv-blocks", "16", "--api-key", "k")
    assert (ns.host, ns.port) == ("127.0.0.1", 8400)
    config, disagg = serve.engine_configs_from_args(ns)
    assert config.cache.num_kv_blocks == 16 and disagg is None  # one in-process engine
    server = ServerConfig.from_cli_args(ns)
    assert server.served_model_name == str(tiny_model) and server.api_key == "k"


def test_placement_and_stage_flags_pick_the_ray_engine(tiny_model: Path,
                                                       tmp_path: Path) -> None:
    placement = _placement(tmp_path, mode="disaggregated", prefill={"tp": 2},
                           decode={"tp": 1, "instances": 2})
    _, disagg = serve.engine_configs_from_args(_args("--model", str(tiny_model),
                                                     "--placement", placement))
    assert (disagg.mode, disagg.prefill_tp, disagg.num_decode_instances) == \
        ("disaggregated", 2, 2)
    _, disagg = serve.engine_configs_from_args(_args("--model", str(tiny_model), "--mode",
                                                     "colocated", "--decode-tp", "2"))
    assert (disagg.mode, disagg.decode_tp) == ("colocated", 2)


def test_bad_flags_exit_with_code_2(tiny_model: Path, tmp_path: Path) -> None:
    assert serve.main(["--model", str(tiny_model), "--placement",
                       str(tmp_path / "missing.json")]) == 2
    assert serve.main(["--model", str(tmp_path)]) == 2  # no config.json


def test_server_config_validates() -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        ServerConfig(max_body_bytes=0)
    with pytest.raises(ValueError, match="served_model_name"):
        ServerConfig(served_model_name="")
