"""Schema-driven fuzzing (schemathesis over the app's OpenAPI document) of every route of the
in-process API server: any generated body gets an answer below 500, and the server still
serves afterwards."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

from distllm.entrypoints.api_server import build_app
from tests.entrypoints.conftest import GatedEngine, make_engine

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def app(tiny_model):  # noqa: ANN001, ANN201 - fixture plumbing
    from distllm.engine.async_llm import AsyncLLM
    from distllm.entrypoints.http_common import ServerConfig

    engine = AsyncLLM(GatedEngine(make_engine(tiny_model)), max_queued_requests=100)
    yield build_app(engine, ServerConfig(served_model_name="tiny", max_body_bytes=64 * 1024))
    engine.shutdown()


FUZZED = [("/generate", "POST"), ("/v1/completions", "POST"), ("/v1/chat/completions", "POST"),
          ("/tokenize", "POST"), ("/detokenize", "POST"), ("/v1/models", "GET"),
          ("/health", "GET")]


@pytest.fixture(scope="module")
def fuzz_schema(app):  # noqa: ANN001, ANN201 - fixture plumbing
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_schema_describes_request_bodies(app) -> None:  # noqa: ANN001
    paths = app.openapi()["paths"]
    for path in ("/generate", "/v1/completions", "/v1/chat/completions", "/tokenize"):
        assert "requestBody" in paths[path]["post"], path


@pytest.mark.parametrize("path,method,mode", [
    (path, method, mode) for path, method in FUZZED for mode in GenerationMode
    if method == "POST" or mode is GenerationMode.POSITIVE])  # a GET has nothing to break
def test_fuzzed_requests_never_get_5xx(fuzz_schema, path: str, method: str,  # noqa: ANN001
                                       mode: GenerationMode) -> None:
    operation = fuzz_schema[path][method]
    strategy = operation.as_strategy(mode)
    seen: list[int] = []

    @given(case=strategy)
    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call(timeout=30)
        seen.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text[:500])

    check()
    assert seen
