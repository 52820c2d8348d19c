"""Graceful shutdown: SIGTERM to a `distllm serve` subprocess answers every in-flight request
(finished, or aborted with finish_reason "abort" once the drain timeout passes), refuses new
ones, and exits with code 0."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model: Path, port: int, drain_timeout_s: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "distllm", "serve", "--model", str(model), "--port", str(port),
           "--num-kv-blocks", "64", "--block-size", "8", "--max-model-len", "256",
           "--drain-timeout-s", str(drain_timeout_s), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not start")


def _stream(port: int, max_tokens: int, started: threading.Event, out: list) -> None:
    """A streaming /generate; appends its last NDJSON line (or the exception)."""
    body = json.dumps({"prompt": "hello", "max_tokens": max_tokens, "ignore_eos": True,
                       "stream": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", body,
                                 {"Content-Type": "application/json"})
    last = None
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            for line in resp:
                last = json.loads(line)
                started.set()
        out.append(last)
    except Exception as e:  # noqa: BLE001 - recorded, asserted on by the test
        out.append(e)
        started.set()


@pytest.mark.parametrize("drain_timeout_s,max_tokens,reasons", [
    (30.0, 40, {"length"}),  # drain: every request runs to its end
    (0.0, 240, {"abort"}),  # no drain time: in-flight requests are aborted, still answered
], ids=["drain", "abort"])
def test_sigterm_answers_in_flight_requests_then_exits(tiny_model: Path,
                                                       drain_timeout_s: float, max_tokens: int,
                                                       reasons: set[str]) -> None:
    port = _free_port()
    proc = _start_server(tiny_model, port, drain_timeout_s)
    try:
        out: list = []
        events = [threading.Event() for _ in range(4)]
        threads = [threading.Thread(target=_stream, args=(port, max_tokens, e, out))
                   for e in events]
        for t in threads:
            t.start()
        for e in events:
            assert e.wait(30)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert proc.wait(30) == 0
        assert len(out) == 4
        for last in out:
            assert isinstance(last, dict), last
            assert last["finished"] and last.get("finish_reason") in reasons, last
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_draining_server_refuses_new_requests(tiny_model: Path) -> None:
    from urllib.error import HTTPError

    from tests.entrypoints.conftest import _start

    servers = _start(tiny_model)
    server = next(servers)
    try:
        server.engine.stop_accepting()
        for path, body in (("/health", None), ("/generate", b'{"prompt": "hi"}')):
            req = urllib.request.Request(server.url + path, body,
                                         {"Content-Type": "application/json"})
            with pytest.raises(HTTPError) as e:
                urllib.request.urlopen(req, timeout=10)
            assert e.value.code == 503
            assert "shutting down" in e.value.read().decode() or path == "/health"
    finally:
        servers.close()
