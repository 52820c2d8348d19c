"""HTTP-level reliability scenarios on a loopback server: soak (many requests, random client
disconnects) and overload (a burst beyond the bounded queue). Used by
evaluation/reliability_report.py and, in short versions, by tests/reliability.

A `Ledger` wraps the engine's `generate` to check that every request the server starts ends
exactly once (one finished output at most, its stream closed once); KV blocks in use come from
the server's /metrics (`distllm_num_kv_blocks_used`).
"""
from __future__ import annotations

import asyncio
import gc
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import numpy as np

from distllm.engine.async_llm import AsyncLLM


@dataclass
class ScenarioResult:
    """One row of the reliability table."""

    scenario: str
    injected: str
    num_requests: int
    affected: int  # requests the fault / overload / disconnect touched
    recovered: bool  # served normally again afterwards
    time_to_recover_s: float | None
    no_response: int  # requests that never got an answer (must be 0)
    blocks_leaked: int  # KV blocks still in use at the end (must be 0)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Ledger:
    """Counts starts / ends / finished outputs of every engine request (see module doc)."""

    def __init__(self, engine: AsyncLLM) -> None:
        self.started: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        inner = engine.generate

        async def generate(prompt: Any, params: Any, request_id: str | None = None
                           ) -> AsyncIterator[Any]:
            rid = request_id or f"ledger-{len(self.started)}"
            self.started[rid] += 1
            outputs = inner(prompt, params, rid)
            try:
                async for output in outputs:
                    self.finished[rid] += output.finished
                    yield output
            finally:
                await outputs.aclose()
                self.ended[rid] += 1

        engine.generate = generate  # type: ignore[method-assign]

    def violations(self) -> list[str]:
        """Requests that did not end exactly once or finished more than once."""
        bad = [rid for rid in self.started if self.ended[rid] != 1 or self.started[rid] != 1]
        return bad + [rid for rid, n in self.finished.items() if n > 1]


@contextmanager
def loopback_server(engine: AsyncLLM, **server_config: Any) -> Iterator[str]:
    """Serve `build_app(engine)` with uvicorn on 127.0.0.1 (a thread); yields the base URL."""
    import uvicorn

    from distllm.entrypoints.api_server import build_app
    from distllm.entrypoints.http_common import ServerConfig

    app = build_app(engine, ServerConfig(**{"served_model_name": "tiny", **server_config}))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False,
                                           timeout_graceful_shutdown=2, backlog=4096))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def used_kv_blocks(metrics_text: str) -> dict[str, float]:
    pattern = r'^distllm_num_kv_blocks_used\{instance="([^"]+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, metrics_text, re.M)}


def counter_total(metrics_text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics_text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


async def _metrics(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url + "/metrics") as resp:
        return await resp.text()


async def settled_blocks(session: aiohttp.ClientSession, url: str, timeout_s: float = 10.0
                         ) -> int:
    """KV blocks in use once the server went idle (or after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        used = int(sum(used_kv_blocks(await _metrics(session, url)).values()))
        if used == 0 or time.monotonic() > deadline:
            return used
        await asyncio.sleep(0.05)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * 4096 / 2**20


async def _one_soak_request(session: aiohttp.ClientSession, url: str, i: int,
                            rng: np.random.Generator, disconnect_p: float) -> str:
    """One request of a random kind; returns its outcome (exactly one per call)."""
    prompt = [int(t) for t in rng.integers(4, 500, size=int(rng.integers(4, 40)))]
    body = {"prompt": prompt, "max_tokens": int(rng.integers(1, 9)), "ignore_eos": True,
            "request_id": f"soak-{i}"}
    disconnect = rng.random() < disconnect_p
    if not disconnect:
        body["stream"] = bool(rng.random() < 0.5)
        async with session.post(url + "/generate", json=body) as resp:
            text = await resp.text()
            done = '"finished":true' in text or '"finish_reason"' in text
            return "ok" if resp.status == 200 and done else f"status-{resp.status}"
    if rng.random() < 0.5:  # stream, read a few lines, hang up
        body["stream"] = True
        async with session.post(url + "/generate", json=body) as resp:
            for _ in range(int(rng.integers(0, 3))):
                if not await resp.content.readline():
                    break
            resp.close()
        return "disconnected"
    try:  # non-streaming, give up after a random short wait
        await asyncio.wait_for(_post_text(session, url + "/generate", body),
                               float(rng.uniform(0.0, 0.05)))
        return "ok"
    except TimeoutError:
        return "disconnected"


async def _post_text(session: aiohttp.ClientSession, url: str, body: dict) -> str:
    async with session.post(url, json=body) as resp:
        return await resp.text()


async def soak(url: str, ledger: Ledger, num_requests: int, concurrency: int, seed: int,
               disconnect_p: float) -> ScenarioResult:
    """Drive `num_requests` through the server at `concurrency` (see module doc)."""
    rng = np.random.default_rng(seed)
    rngs = rng.spawn(num_requests)
    sem = asyncio.Semaphore(concurrency)
    outcomes: Counter[str] = Counter()
    rss: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(connector=connector) as session:
        async def run(i: int) -> None:
            async with sem:
                outcomes[await _one_soak_request(session, url, i, rngs[i], disconnect_p)] += 1
                if i % max(1, num_requests // 10) == 0:
                    rss.append(rss_mb())

        started = time.monotonic()
        await asyncio.gather(*(run(i) for i in range(num_requests)))
        elapsed = time.monotonic() - started
        leaked = await settled_blocks(session, url)
        text = await _metrics(session, url)
    gc.collect()
    answered = counter_total(text, "distllm_request_success_total")
    warm = rss[len(rss) // 5] if rss else rss_mb()
    return ScenarioResult(
        "soak", f"{outcomes['disconnected']} client disconnects", num_requests,
        outcomes["disconnected"], recovered=outcomes["ok"] + outcomes["disconnected"]
        == num_requests, time_to_recover_s=None,
        no_response=num_requests - outcomes["ok"] - outcomes["disconnected"],
        blocks_leaked=leaked,
        details={"outcomes": dict(outcomes), "ledger_violations": ledger.violations()[:10],
                 "engine_requests": len(ledger.started), "server_counted": answered,
                 "rss_warm_mb": round(warm, 1), "rss_end_mb": round(rss_mb(), 1),
                 "elapsed_s": round(elapsed, 2),
                 "requests_per_s": round(num_requests / elapsed, 1)})


async def overload(url: str, burst: int, capacity_tokens: int) -> ScenarioResult:
    """A burst of `burst` simultaneous requests beyond the queue, then normal traffic; plus a
    prompt longer than the KV capacity (must be 400)."""
    body = {"prompt": "hello world", "max_tokens": 8, "ignore_eos": True}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def post(b: dict) -> tuple[int, str | None]:
            async with session.post(url + "/generate", json=b) as resp:
                await resp.read()
                return resp.status, resp.headers.get("Retry-After")

        results = await asyncio.gather(*(post(body) for _ in range(burst)))
        burst_end = time.monotonic()
        statuses = Counter(s for s, _ in results)
        retry_after = all(r is not None for s, r in results if s == 503)
        recovered_at = None
        for _ in range(200):
            if (await post(body))[0] == 200:
                recovered_at = time.monotonic()
                break
            await asyncio.sleep(0.05)
        too_long = (await post({"prompt": list(range(4, 5 + capacity_tokens)),
                                "max_tokens": 1}))[0]
        leaked = await settled_blocks(session, url)
    return ScenarioResult(
        "overload", f"burst of {burst} requests", burst, statuses[503],
        recovered=recovered_at is not None and retry_after and too_long == 400,
        time_to_recover_s=None if recovered_at is None else round(recovered_at - burst_end, 3),
        no_response=burst - sum(statuses.values()), blocks_leaked=leaked,
        details={"statuses": {str(k): v for k, v in statuses.items()},
                 "retry_after_on_every_503": retry_after, "too_long_prompt_status": too_long})
