"""evaluation/start_api_server.py: starts a real `distllm serve` on a tiny model, then stops it."""
from __future__ import annotations

import importlib.util
import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from evaluation import start_api_server

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_wrapper_starts_and_stops_a_distllm_server(tiny_model: Path) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "evaluation.start_api_server", "--backend", "distllm",
           "--model", str(tiny_model), "--port", str(port), "--startup-timeout-s", "120",
           "--", "--num-kv-blocks", "32", "--max-model-len", "128", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    try:
        printed = proc.stdout.readline().strip()
        assert printed.split()[1:5] == ["-m", "distllm", "serve", "--model"]
        assert f"--port {port}" in printed and "--num-kv-blocks 32" in printed
        assert proc.stdout.readline().startswith(f"ready: http://127.0.0.1:{port}")
        body = json.dumps({"prompt": "Good morning", "max_tokens": 4, "ignore_eos": True})
        req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", body.encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert len(json.loads(resp.read())["token_ids"]) == 4
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        assert proc.wait(30) == 0
        assert "stopped (server exit code 0)" in proc.stdout.read()
        assert not _is_listening(port)
    finally:
        if proc.poll() is None:  # SIGTERM: the wrapper still stops its server
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_presets_and_placement_override(tmp_path: Path) -> None:
    ns = start_api_server.make_parser().parse_args(["--model", "facebook/opt-66b"])
    ns.port = 8400
    cmd = start_api_server.distllm_command(ns, [])
    placement = json.loads(Path(cmd[cmd.index("--placement") + 1]).read_text())
    assert placement["prefill"]["tp"] == 4 and placement["decode"] == {"tp": 2, "pp": 2,
                                                                        "instances": 1}
    ns.placement = str(tmp_path / "mine.json")
    cmd = start_api_server.distllm_command(ns, [])
    assert cmd[cmd.index("--placement") + 1] == ns.placement
    vllm = start_api_server.vllm_command(ns, [])
    assert vllm[vllm.index("--tensor-parallel-size") + 1] == "4"
    assert start_api_server.find_preset("/models/opt-13b").prefill == (2, 1)
    assert start_api_server.find_preset("tiny") is None


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_backend_package_is_a_one_line_error(capsys: pytest.CaptureFixture) -> None:
    assert start_api_server.main(["--backend", "vllm", "--model", "m", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'vllm'" in err[0]
