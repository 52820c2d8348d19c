"""Fixtures: a mock streaming server on 127.0.0.1, run in a background thread with its own loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from evaluation.mock_server import MockServer, start_mock_server


class ServerThread:
    def __init__(self, server: MockServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10), "mock server did not start"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner, self.port = self.loop.run_until_complete(start_mock_server(self.server))
        ready.set()
        self.loop.run_forever()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def mock_server(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    """Parametrize indirectly with MockServer kwargs; default 20 ms TTFT, 5 ms per token."""
    kwargs = getattr(request, "param", {"ttft_s": 0.02, "tpot_s": 0.005})
    srv = ServerThread(MockServer(**kwargs))
    yield srv
    srv.stop()
