"""POST /generate over aiohttp (the load generator's wire format), disconnects, /metrics."""
from __future__ import annotations

import asyncio
import json

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from evaluation.backends import BackendRequest, DistllmBackend
from tests.entrypoints.conftest import RunningServer

EVENTS = ["arrival", "prefill_begin", "prefill_end", "decode_begin", "decode_end"]


async def _post_lines(url: str, body: dict) -> list[dict]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        return [json.loads(line) async for line in resp.content if line.strip()]


def test_generate_streams_ndjson_deltas(server: RunningServer) -> None:
    body = {"prompt": "Once upon a time", "stream": True, "max_tokens": 24,
            "ignore_eos": True, "temperature": 0.0, "top_p": 1.0}
    lines = asyncio.run(_post_lines(server.url + "/generate", body))
    assert len(lines) > 1 and all(not line["finished"] for line in lines[:-1])
    last = lines[-1]
    assert last["finished"] and last["finish_reason"] == "length"
    assert sum(len(line["token_ids"]) for line in lines) == 24
    assert [e["event_type"] for e in last["lifetime_events"]] == EVENTS
    times = [e["timestamp"] for e in last["lifetime_events"]]
    assert times == sorted(times)
    plain = asyncio.run(_post_json(server.url + "/generate", {**body, "stream": False}))
    assert plain["text"] == "".join(line["text"] for line in lines)
    assert plain["token_ids"] == [t for line in lines for t in line["token_ids"]]
    assert len(plain["timestamps"]) == 24 and plain["timestamps"] == sorted(plain["timestamps"])
    assert plain["finish_reason"] == "length"
    assert [e["event_type"] for e in plain["lifetime_events"]] == EVENTS


async def _post_json(url: str, body: dict) -> dict:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def test_distserve_payload_and_load_generator_backend(server: RunningServer) -> None:
    distserve = {"prompt": "Good morning", "n": 1, "best_of": 1, "use_beam_search": False,
                 "temperature": 1.0, "top_p": 1.0, "max_tokens": 8, "ignore_eos": True,
                 "stream": False}
    assert len(asyncio.run(_post_json(server.url + "/generate", distserve))["token_ids"]) == 8

    async def run_backend() -> object:
        backend = DistllmBackend(server.url)
        async with aiohttp.ClientSession() as session:
            return await backend.generate(session, BackendRequest("Water boils at", 4, 16))

    result = asyncio.run(run_backend())
    assert result.error is None
    assert len(result.token_timestamps) == 16
    assert [e["event_type"] for e in result.lifecycle_events] == EVENTS


def test_client_disconnect_aborts_and_frees_blocks(server: RunningServer) -> None:
    async def read_two_lines_then_leave() -> None:
        body = {"prompt": "Once upon a time", "stream": True, "max_tokens": 230,
                "ignore_eos": True}
        async with aiohttp.ClientSession() as session:
            resp = await session.post(server.url + "/generate", json=body)
            await resp.content.readline()
            await resp.content.readline()
            resp.close()  # drop the connection mid-stream

    aborted_before = _sample(server, "distllm_request_success_total", finish_reason="abort")
    server.gated.step_delay_s = 0.005  # the request cannot finish before the client leaves
    try:
        asyncio.run(read_two_lines_then_leave())
        assert server.all_blocks_free()
    finally:
        server.gated.step_delay_s = 0.0
    aborted = _sample(server, "distllm_request_success_total", finish_reason="abort")
    assert aborted == aborted_before + 1


def test_non_streaming_disconnect_aborts(server: RunningServer) -> None:
    async def leave_early() -> None:
        body = {"prompt": "Good morning", "max_tokens": 230, "ignore_eos": True}
        async with aiohttp.ClientSession() as session:
            try:
                await session.post(server.url + "/generate", json=body,
                                   timeout=aiohttp.ClientTimeout(total=0.2))
            except TimeoutError:
                pass

    aborted_before = _sample(server, "distllm_request_success_total", finish_reason="abort")
    server.gated.step_delay_s = 0.005
    try:
        asyncio.run(leave_early())
        assert server.all_blocks_free()
    finally:
        server.gated.step_delay_s = 0.0
    assert _sample(server, "distllm_request_success_total",
                   finish_reason="abort") == aborted_before + 1


def _metrics(server: RunningServer) -> dict:
    import urllib.request

    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample(server: RunningServer, name: str, **labels: str) -> float:
    for family in _metrics(server).values():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_metrics_scrape_parses(server: RunningServer) -> None:
    asyncio.run(_post_json(server.url + "/generate",
                           {"prompt": "a", "max_tokens": 5, "ignore_eos": True}))
    families = _metrics(server)
    for name in ("distllm_time_to_first_token_seconds", "distllm_time_per_output_token_seconds",
                 "distllm_num_requests_running", "distllm_num_requests_waiting",
                 "distllm_kv_cache_usage_ratio", "distllm_num_migrations_in_flight",
                 "distllm_num_preemptions"):
        assert name in families, name
    assert _sample(server, "distllm_time_to_first_token_seconds_count") >= 1
    assert _sample(server, "distllm_time_per_output_token_seconds_count") >= 4
    running = [s for s in families["distllm_num_requests_running"].samples]
    assert running[0].labels == {"instance": "colocated-0"}


def test_health_tokenize_detokenize(server: RunningServer) -> None:
    async def run() -> tuple:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/health") as r:
                health = r.status
            async with session.post(server.url + "/tokenize", json={"prompt": "Good morning"}) \
                    as r:
                tokens = await r.json()
            async with session.post(server.url + "/detokenize",
                                    json={"tokens": tokens["tokens"]}) as r:
                text = await r.json()
        return health, tokens, text

    health, tokens, text = asyncio.run(run())
    assert health == 200
    assert tokens["count"] == len(tokens["tokens"]) > 1 and tokens["max_model_len"] == 256
    assert text["prompt"] == "Good morning"
