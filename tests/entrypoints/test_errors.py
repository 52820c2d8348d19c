"""Bad input -> 400 naming the field; 401 without the API key; 413 on big bodies; 503 with
Retry-After when the queue is full; engine failures fail requests without hanging them."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.entrypoints.conftest import MAX_MODEL_LEN, RunningServer


async def _request(url: str, data: bytes | None = None, headers: dict | None = None,
                   method: str = "POST") -> tuple[int, dict, dict]:
    headers = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as session, \
            session.request(method, url, data=data, headers=headers) as resp:
        text = await resp.text()
        return resp.status, dict(resp.headers), json.loads(text) if text else {}


def _post(url: str, body: object, headers: dict | None = None) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return asyncio.run(_request(url, data, headers))


LONG_PROMPT = list(range(3, 3 + MAX_MODEL_LEN + 1))
BAD_BODIES = [  # (path, body, param)
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": ', None),  # malformed JSON
    ("/v1/completions", b'["not", "an", "object"]', None),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "5"}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "frobnicate": 1}, "frobnicate"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/completions", {"prompt": LONG_PROMPT}, "prompt"),
    ("/v1/completions", {"prompt": [10**9]}, "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -3}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1.0}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 1.5}, "top_p"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": "hi", "n": 2}, "n"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
    ("/v1/completions", {}, "prompt"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "max_completion_tokens": 0}, "max_completion_tokens"),
    ("/generate", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/generate", {"prompt": "", "stream": True}, "prompt"),
    ("/generate", {"prompt": "hi", "stream": "yes"}, "stream"),
    ("/generate", {"prompt": "hi", "stop": [""]}, "stop"),
    ("/generate", {"prompt": "hi", "use_beam_search": True}, "use_beam_search"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
]


@pytest.mark.parametrize("path,body,param", BAD_BODIES)
def test_bad_input_gets_400_naming_the_field(server: RunningServer, path: str, body: object,
                                             param: str | None) -> None:
    status, _, answer = _post(server.url + path, body)
    assert status == 400, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"] and error["code"] == 400
    if param is not None:
        assert param in error["message"] or path == "/tokenize"


def test_unknown_route_and_model_use_the_error_object(server: RunningServer) -> None:
    status, _, answer = _post(server.url + "/v1/nothing", {})
    assert status == 404 and answer["error"]["code"] == 404
    status, _, answer = _post(server.url + "/v1/completions", {"model": "gpt-9", "prompt": "a"})
    assert status == 404 and answer["error"]["param"] == "model"


def test_body_size_limit(server: RunningServer) -> None:
    body = {"prompt": "x" * (server.config.max_body_bytes + 10)}
    status, _, answer = _post(server.url + "/v1/completions", body)
    assert status == 413 and "exceeds" in answer["error"]["message"]

    async def chunked() -> int:  # no Content-Length: the limit is counted while reading
        async def parts():  # noqa: ANN202 - async generator body
            yield b'{"prompt": "'
            for _ in range(server.config.max_body_bytes // 1024 + 1):
                yield b"x" * 1024
            yield b'"}'

        async with aiohttp.ClientSession() as session, \
                session.post(server.url + "/generate", data=parts()) as resp:
            return resp.status

    assert asyncio.run(chunked()) == 413


def test_api_key_is_required(guarded_server: RunningServer) -> None:
    url = guarded_server.url
    body = {"prompt": "hi", "max_tokens": 2}
    assert _post(url + "/v1/completions", body)[0] == 401
    status, headers, answer = _post(url + "/generate", body,
                                    {"Authorization": "Bearer wrong"})
    assert status == 401 and answer["error"]["type"] == "authentication_error"
    assert headers["WWW-Authenticate"] == "Bearer"
    assert _post(url + "/generate", body, {"Authorization": "Bearer secret"})[0] == 200
    assert asyncio.run(_request(url + "/health", method="GET"))[0] == 200


def test_full_queue_gets_503_with_retry_after(guarded_server: RunningServer) -> None:
    auth = {"Authorization": "Bearer secret"}
    body = json.dumps({"prompt": "hi", "max_tokens": 3, "ignore_eos": True}).encode()
    engine, gated = guarded_server.engine, guarded_server.gated

    async def run() -> tuple:
        gated.gate.clear()  # the engine stalls: the first request stays queued
        first = asyncio.ensure_future(_request(guarded_server.url + "/generate", body, auth))
        while engine.num_queued_requests < 1:
            await asyncio.sleep(0.01)
        second = await _request(guarded_server.url + "/generate", body, auth)
        gated.gate.set()
        return await first, second

    try:
        first, second = asyncio.run(run())
    finally:
        gated.gate.set()
    assert first[0] == 200 and len(first[2]["token_ids"]) == 3
    status, headers, answer = second
    assert status == 503 and headers["Retry-After"] == "2"
    assert answer["error"]["code"] == 503
    assert guarded_server.all_blocks_free()


def test_engine_failure_fails_the_request_and_keeps_serving(server: RunningServer) -> None:
    body = {"prompt": "Good morning", "max_tokens": 8, "ignore_eos": True}
    server.gated.fail_at_step = server.gated.num_steps
    status, _, answer = _post(server.url + "/generate", body)
    assert status == 500 and "injected step failure" in answer["error"]["message"]
    assert server.all_blocks_free()
    status, _, answer = _post(server.url + "/generate", body)
    assert status == 200 and len(answer["token_ids"]) == 8


def test_engine_failure_mid_stream_sends_an_error_line(server: RunningServer) -> None:
    async def run() -> list[dict]:
        body = {"prompt": "Good morning", "max_tokens": 50, "ignore_eos": True, "stream": True}
        async with aiohttp.ClientSession() as session, \
                session.post(server.url + "/generate", json=body) as resp:
            assert resp.status == 200
            lines = [json.loads(await resp.content.readline())]
            server.gated.fail_at_step = server.gated.num_steps + 2
            return lines + [json.loads(line) async for line in resp.content if line.strip()]

    lines = asyncio.run(run())
    assert "injected step failure" in lines[-1]["error"]
    assert all("error" not in line for line in lines[:-1])
    assert server.all_blocks_free()
