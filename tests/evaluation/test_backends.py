"""Stream parsing of each backend on hand-written wire data (no server)."""

from __future__ import annotations

import asyncio
import json

import pytest

from evaluation.backends import BackendRequest, BackendResult, create_backend


class FakeResponse:
    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    @property
    def content(self):  # noqa: ANN201 - async iterator of lines, like aiohttp's StreamReader
        async def gen():  # noqa: ANN202
            for line in self.lines:
                yield line

        return gen()

    async def text(self) -> str:
        return b"".join(self.lines).decode()


def _parse(backend: str, lines: list[bytes]) -> BackendResult:
    out = BackendResult()
    be = create_backend(backend, "http://127.0.0.1:1", model="m")
    asyncio.run(be.read_response(FakeResponse(lines), out))
    return out


def _nd(*objs: dict) -> list[bytes]:
    return [json.dumps(o).encode() + b"\n" for o in objs]


def test_distllm_counts_tokens_and_reads_lifetime() -> None:
    events = [{"event_type": "arrival", "timestamp": 1.0}]
    out = _parse(
        "distllm",
        _nd(
            {"text": "a", "token_ids": [5], "finished": False},
            {"text": "bc", "token_ids": [6, 7], "finished": False},
            {"text": "d", "finished": False},
            {"text": "", "finished": True, "lifetime_events": events},
        ),
    )
    assert len(out.token_timestamps) == 4 and out.text == "abcd"
    assert out.lifecycle_events == events and out.error is None
    assert _parse("distllm", _nd({"text": "a"}, {"error": "oom"})).error == "server error: oom"


def test_openai_sse_parsing() -> None:
    chunks = [
        b": keep-alive\n",
        b"\n",
        b'data: {"choices": [{"index": 0, "text": "he"}]}\n',
        b"\n",
        b'data: {"choices": [{"index": 0, "text": ""}]}\n',
        b'data: {"choices": [{"index": 0, "text": "llo"}]}\n',
        b'data: {"choices": [], "usage": {"completion_tokens": 3}}\n',
        b"data: [DONE]\n",
        b'data: {"choices": [{"index": 0, "text": "late"}]}\n',
    ]
    out = _parse("openai", chunks)
    assert out.text == "hello" and len(out.token_timestamps) == 2
    assert out.num_output_tokens == 3


def test_openai_chat_skips_role_chunk() -> None:
    chunks = [
        b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}\n',
        b'data: {"choices": [{"delta": {"content": "hi"}}]}\n',
        b"data: [DONE]\n",
    ]
    out = _parse("openai-chat", chunks)
    assert out.text == "hi" and len(out.token_timestamps) == 1


@pytest.mark.parametrize(
    "body",
    [
        b'[{"generated_text": "x y", "generated_length": 2}]',
        json.dumps(json.dumps([{"generated_text": "x y", "generated_length": 2}])).encode(),
    ],
)
def test_deepspeed_answer_formats(body: bytes) -> None:
    out = _parse("deepspeed", [body])
    assert out.text == "x y" and out.num_output_tokens == 2


def test_payloads() -> None:
    req = BackendRequest("p", 3, 7, ignore_eos=True)
    assert create_backend("distllm", "http://h:1/").payload(req)["max_tokens"] == 7
    assert create_backend("distllm", "http://h:1/").url == "http://h:1/generate"
    chat = create_backend("openai-chat", "http://h:1", model="m").payload(req)
    assert chat["messages"] == [{"role": "user", "content": "p"}]
    assert chat["max_completion_tokens"] == 7 and chat["stream_options"]["include_usage"]
    mii = create_backend("deepspeed", "http://h:1", model="dep")
    assert mii.url == "http://h:1/mii/dep" and mii.payload(req)["max_new_tokens"] == 7
    with pytest.raises(ValueError, match="unknown backend"):
        create_backend("tgi", "http://h:1")
