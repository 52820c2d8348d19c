"""The official `openai` client against the server over loopback HTTP."""
from __future__ import annotations

import openai
import pytest

from distllm import LLM, SamplingParams
from tests.entrypoints.conftest import MAX_MODEL_LEN, RunningServer


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=30)


@pytest.fixture(scope="module")
def reference(server: RunningServer) -> LLM:
    """The offline API on the same model: greedy outputs must match the server's."""
    return LLM(model=server.config.model_path, num_kv_blocks=64, block_size=8,
               max_model_len=MAX_MODEL_LEN)


def _greedy(reference: LLM, prompt: str, n: int) -> str:
    (out,) = reference.generate(prompt, SamplingParams(max_tokens=n, temperature=0.0,
                                                       ignore_eos=True), use_tqdm=False)
    return out.text


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_completion_matches_offline_greedy(client: openai.OpenAI, reference: LLM,
                                           server: RunningServer) -> None:
    prompt = "Once upon a time"
    resp = client.completions.create(model="tiny", prompt=prompt, max_tokens=12,
                                     temperature=0.0, extra_body={"ignore_eos": True})
    assert resp.choices[0].text == _greedy(reference, prompt, 12)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens == len(reference.engine.tokenizer.encode(prompt))
    assert server.all_blocks_free()


def test_streaming_completion_with_usage(client: openai.OpenAI, reference: LLM) -> None:
    stream = client.completions.create(model="tiny", prompt="Good morning", max_tokens=20,
                                       temperature=0.0, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == _greedy(reference, "Good morning", 20)
    assert sum(1 for c in chunks if c.choices) > 1  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_chat_uses_the_tokenizer_chat_template(client: openai.OpenAI, reference: LLM) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is the capital of France?"}]
    resp = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                          temperature=0.0, extra_body={"ignore_eos": True})
    prompt = "system: Be brief.\nuser: What is the capital of France?\nassistant:"
    ids = reference.engine.tokenizer.encode(prompt, add_special_tokens=False)
    (expected,) = reference.generate([ids], SamplingParams(max_tokens=10, temperature=0.0,
                                                          ignore_eos=True), use_tqdm=False)
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == expected.text
    assert resp.usage.prompt_tokens == len(ids) and resp.usage.completion_tokens == 10


def test_streaming_chat(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me a story"}],
        max_completion_tokens=15, temperature=0.8, seed=3, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 15
    again = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me a story"}],
        max_completion_tokens=15, temperature=0.8, seed=3, extra_body={"ignore_eos": True})
    assert again.choices[0].message.content == content  # seeded sampling is reproducible


def test_stop_string_ends_the_completion(client: openai.OpenAI, reference: LLM) -> None:
    full = _greedy(reference, "Once upon a time", 30)
    stop = full[5:9]
    resp = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=30,
                                     temperature=0.0, stop=[stop],
                                     extra_body={"ignore_eos": True})
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].text == full[:full.index(stop)]


def test_openai_client_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="hi", max_tokens=0)
    assert info.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)


def test_echo_and_token_id_prompts(client: openai.OpenAI, reference: LLM) -> None:
    ids = reference.engine.tokenizer.encode("Water boils at")
    resp = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0.0,
                                     echo=True, extra_body={"ignore_eos": True})
    text = resp.choices[0].text
    assert text.startswith("Water boils at")
    assert text[len("Water boils at"):] == _greedy(reference, "Water boils at", 5)
