"""Fixtures: a tiny Llama model and API servers on loopback (uvicorn in a background thread)."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from distllm.config import EngineConfig
from distllm.engine.async_llm import AsyncLLM
from distllm.engine.llm_engine import LLMEngine
from distllm.entrypoints.http_common import ServerConfig

MAX_MODEL_LEN = 256


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distllm.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama-api"), arch="llama", seed=0)


def make_engine(model: Path) -> LLMEngine:
    config = EngineConfig.from_kwargs(str(model), num_kv_blocks=64, block_size=8,
                                      max_num_seqs=8, max_model_len=MAX_MODEL_LEN)
    return LLMEngine(config)


class GatedEngine:
    """An LLMEngine whose `step()` waits on `gate` and can be told to fail (for tests)."""

    def __init__(self, engine: LLMEngine) -> None:
        self._engine = engine
        self.gate = threading.Event()
        self.gate.set()
        self.fail_at_step: int | None = None  # raise in this step number (0-based)
        self.num_steps = 0
        self.step_delay_s = 0.0  # slow the engine down (disconnect tests)

    def step(self) -> list:
        self.gate.wait()
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        self.num_steps += 1
        if self.fail_at_step is not None and self.num_steps - 1 == self.fail_at_step:
            self.fail_at_step = None
            raise RuntimeError("injected step failure")
        return self._engine.step()

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)


@dataclass
class RunningServer:
    url: str
    engine: AsyncLLM
    gated: GatedEngine
    config: ServerConfig

    @property
    def block_manager(self) -> object:
        return self.gated.block_manager

    def all_blocks_free(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        bm = self.block_manager
        while time.monotonic() < deadline:
            if bm.num_free_blocks == bm.num_blocks and not self.engine.stats()["num_requests"]:
                return True
            time.sleep(0.01)
        return False


def serve_in_thread(app: object) -> tuple[str, object, threading.Thread]:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    return f"http://127.0.0.1:{port}", server, thread


def running_server(llm_engine: LLMEngine, config: ServerConfig,
                   max_queued: int | None) -> Iterator[RunningServer]:
    """Serve `llm_engine` (behind a GatedEngine) on loopback until the generator is closed."""
    from distllm.entrypoints.api_server import build_app

    gated = GatedEngine(llm_engine)
    engine = AsyncLLM(gated, max_queued_requests=max_queued)
    url, server, thread = serve_in_thread(build_app(engine, config))
    try:
        yield RunningServer(url, engine, gated, config)
    finally:
        gated.gate.set()
        server.should_exit = True
        thread.join(10)
        engine.shutdown()


def _start(model: Path, **server_kwargs: object) -> Iterator[RunningServer]:
    max_queued = server_kwargs.pop("max_queued_requests", None)
    config = ServerConfig(served_model_name="tiny", model_path=str(model), **server_kwargs)
    yield from running_server(make_engine(model), config, max_queued)


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[RunningServer]:
    yield from _start(tiny_model, max_body_bytes=64 * 1024, max_queued_requests=1000)


@pytest.fixture(scope="module")
def guarded_server(tiny_model: Path) -> Iterator[RunningServer]:
    """API key "secret" and at most one queued request."""
    yield from _start(tiny_model, api_key="secret", max_queued_requests=1, retry_after_s=2)
