"""HTTP API server: `build_app(engine) -> FastAPI` over an `AsyncLLM`.

Routes: POST /generate (DistServe-compatible, NDJSON streaming; wire format in
evaluation/backends.py), POST /v1/completions and /v1/chat/completions (OpenAI, SSE streaming),
GET /v1/models, GET /health, POST /tokenize, POST /detokenize, GET /metrics (Prometheus).
Errors are OpenAI error objects; a client that disconnects aborts its request.
"""
from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from distllm.engine.async_llm import AsyncLLM, EngineError
from distllm.engine.outputs import RequestOutput
from distllm.entrypoints import openai_serving
from distllm.entrypoints.http_common import (
    ApiError,
    ClientDisconnected,
    ServerConfig,
    ServingContext,
    read_model,
)
from distllm.entrypoints.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    GenerateRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
    error_body,
    random_id,
)
from distllm.entrypoints.openapi_schema import attach_request_schemas
from distllm.entrypoints.server_metrics import CONTENT_TYPE, ServerMetrics
from distllm.sampling_params import SamplingParamsError

logger = logging.getLogger(__name__)
NDJSON = "application/x-ndjson"
_OPEN_PATHS = ("/health",)  # reachable without the API key


class ApiKeyMiddleware:
    """Pure ASGI middleware: 401 unless `Authorization: Bearer <key>` (except /health)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self._expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            error_body("invalid or missing API key", "authentication_error", None, 401),
            status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def _ndjson(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _generate_line(output: RequestOutput, num_sent_tokens: int) -> dict:
    line = {"text": output.new_text, "token_ids": output.token_ids[num_sent_tokens:],
            "finished": output.finished}
    if output.finished:
        line["finish_reason"] = output.finish_reason
        line["lifetime_events"] = output.lifetime.to_json()
    return line


async def _ndjson_stream(ctx: ServingContext, first: RequestOutput,
                         outputs: AsyncIterator[RequestOutput]) -> AsyncIterator[bytes]:
    num_sent = 0
    try:
        async for output in ctx.follow(first, outputs):
            yield _ndjson(_generate_line(output, num_sent))
            num_sent = len(output.token_ids)
    except EngineError as e:
        yield _ndjson({"error": str(e), "finished": True})


async def generate(ctx: ServingContext, request: Request) -> Response:
    """POST /generate: see evaluation/backends.py for the NDJSON stream."""
    body = await read_model(request, GenerateRequest, ctx.config.max_body_bytes)
    prompt_ids = ctx.prompt_ids(body.prompt)
    try:
        params = body.to_sampling_params(body.max_tokens)
    except SamplingParamsError as e:
        raise ctx.sampling_error(e) from None
    outputs = ctx.engine.generate(prompt_ids, params, body.request_id or random_id("gen"))
    first = await ctx.first_output(outputs, request)
    if body.stream:
        return StreamingResponse(_ndjson_stream(ctx, first, outputs), media_type=NDJSON)
    final = await ctx.last_output(first, outputs, request)
    return JSONResponse({
        "text": final.text, "token_ids": final.token_ids, "timestamps": final.token_times,
        "lifetime_events": final.lifetime.to_json(), "finish_reason": final.finish_reason,
        "prompt_len": len(prompt_ids)})


async def tokenize(ctx: ServingContext, request: Request) -> Response:
    body = await read_model(request, TokenizeRequest, ctx.config.max_body_bytes)
    ctx.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(400, "give exactly one of prompt and messages", param="prompt")
    if body.messages is not None:
        text = openai_serving.render_chat(ctx.tokenizer, body.messages,
                                          body.add_generation_prompt)
        tokens = ctx.tokenizer.encode(text, add_special_tokens=False)
    else:
        tokens = ctx.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    return JSONResponse({"tokens": tokens, "count": len(tokens),
                         "max_model_len": ctx.engine.max_model_len})


async def detokenize(ctx: ServingContext, request: Request) -> Response:
    body = await read_model(request, DetokenizeRequest, ctx.config.max_body_bytes)
    ctx.check_model(body.model)
    vocab = ctx.tokenizer.vocab_size
    if any(not 0 <= t < vocab for t in body.tokens):
        raise ApiError(400, f"token ids must be in [0, {vocab})", param="tokens")
    return JSONResponse({"prompt": ctx.tokenizer.decode(body.tokens)})


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> Response:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ClientDisconnected)
    async def disconnected(_: Request, e: ClientDisconnected) -> Response:
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> Response:
        return JSONResponse(error_body(str(e.detail), "invalid_request_error", None,
                                       e.status_code), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> Response:
        logger.error("unhandled %s: %s", type(e).__name__, e)
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}",
                                       "server_error", None, 500), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> Response:
        return JSONResponse(error_body(str(e.errors()), "invalid_request_error", None, 400),
                            status_code=400)


def _add_info_routes(app: FastAPI, ctx: ServingContext) -> None:
    @app.get("/health")
    async def health() -> Response:
        if not ctx.engine.is_running:
            return JSONResponse(error_body("the engine is not running", "service_unavailable",
                                           None, 503), status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> Response:
        card = ModelCard(id=ctx.config.served_model_name, root=ctx.config.model_path,
                         max_model_len=ctx.engine.max_model_len)
        return JSONResponse(ModelList(data=[card]).model_dump())

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)


def build_app(engine: AsyncLLM, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving `engine`. The caller owns the engine (and shuts it down)."""
    ctx = ServingContext(engine, config or ServerConfig(), ServerMetrics(engine))
    app = FastAPI(title="distllm", docs_url=None, redoc_url=None)
    app.state.serving = ctx
    _add_error_handlers(app)
    _add_info_routes(app, ctx)
    routes = {"/generate": generate, "/v1/completions": openai_serving.completions,
              "/v1/chat/completions": openai_serving.chat_completions,
              "/tokenize": tokenize, "/detokenize": detokenize}
    for path, handler in routes.items():
        app.add_api_route(path, _bind(handler, ctx), methods=["POST"])
    attach_request_schemas(app, {
        "/generate": GenerateRequest, "/v1/completions": CompletionRequest,
        "/v1/chat/completions": ChatCompletionRequest,
        "/tokenize": TokenizeRequest, "/detokenize": DetokenizeRequest})
    if ctx.config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=ctx.config.api_key)
    return app


def _bind(handler, ctx: ServingContext):  # noqa: ANN001, ANN202 - route adapter
    async def route(request: Request) -> Response:
        return await handler(ctx, request)

    route.__name__ = handler.__name__
    return route
