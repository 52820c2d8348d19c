"""A small aiohttp server that streams tokens at known times, for tests and the load-generator
benchmark. It speaks the three backends' protocols:

    POST /generate               distllm NDJSON stream (see evaluation/backends.py)
    POST /v1/completions         OpenAI SSE (stream_options.include_usage honoured)
    POST /v1/chat/completions    OpenAI chat SSE
    POST /mii/{deployment}       DeepSpeed-MII REST (non-streaming)

Each request (after waiting for one of `capacity` slots, if set) waits `ttft_s`, then emits
`max_tokens` tokens `tpot_s` apart (token i is "t{i} ").
The server records the receive time of every request (`MockServer.received`, perf_counter seconds).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class MockServer:
    ttft_s: float = 0.0
    tpot_s: float = 0.0
    fail_every: int = 0  # every n-th request answers HTTP 500 (0 = never)
    capacity: int = 0  # requests served at once; the rest queue (0 = unlimited)
    received: list[float] = field(default_factory=list)  # perf_counter at receive
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/generate", self._generate)
        app.router.add_post("/v1/completions", self._openai)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/mii/{deployment}", self._mii)
        return app

    def _admit(self) -> bool:
        self.received.append(time.perf_counter())
        return not (self.fail_every and len(self.received) % self.fail_every == 0)

    async def _tokens(self, n: int):  # noqa: ANN202 - async generator of (index, arrival)
        t0 = time.monotonic()
        if self.capacity and self._slots is None:
            self._slots = asyncio.Semaphore(self.capacity)
        if self._slots is not None:
            await self._slots.acquire()
        try:
            await asyncio.sleep(self.ttft_s)
            for i in range(n):
                if i and self.tpot_s:
                    await asyncio.sleep(self.tpot_s)
                yield i, t0
        finally:
            if self._slots is not None:
                self._slots.release()

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not self._admit():
            return web.json_response({"error": "injected failure"}, status=500)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        n = int(body.get("max_tokens", 16))
        async for i, t0 in self._tokens(n):
            line = {"text": f"t{i} ", "token_ids": [i], "finished": i == n - 1}
            if i == n - 1:
                now = time.monotonic()
                line["lifetime_events"] = [
                    {"event_type": "arrival", "timestamp": t0},
                    {"event_type": "prefill_begin", "timestamp": t0},
                    {"event_type": "prefill_end", "timestamp": t0 + self.ttft_s},
                    {"event_type": "decode_begin", "timestamp": t0 + self.ttft_s},
                    {"event_type": "decode_end", "timestamp": now},
                ]
            await resp.write((json.dumps(line) + "\n").encode())
        await resp.write_eof()
        return resp

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not self._admit():
            return web.json_response({"error": "injected failure"}, status=500)
        is_chat = request.path.endswith("/chat/completions")
        n = int(body.get("max_completion_tokens") or body.get("max_tokens", 16))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        async for i, _ in self._tokens(n):
            choice = (
                {"index": 0, "delta": {"content": f"t{i} "}}
                if is_chat
                else {"index": 0, "text": f"t{i} "}
            )
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}
            await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _mii(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not self._admit():
            return web.json_response({"error": "injected failure"}, status=500)
        n = int(body.get("max_new_tokens", 16))
        await asyncio.sleep(self.ttft_s + self.tpot_s * max(0, n - 1))
        text = "".join(f"t{i} " for i in range(n))
        return web.json_response(
            [{"generated_text": text, "generated_length": n, "finish_reason": "length"}]
        )


async def start_mock_server(server: MockServer, port: int = 0) -> tuple[web.AppRunner, int]:
    """Start on 127.0.0.1 (port 0: any free port) -> (runner, port); stop with runner.cleanup()."""
    runner = web.AppRunner(server.build_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]
