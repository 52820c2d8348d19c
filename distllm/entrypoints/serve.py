"""`distllm serve`: the HTTP API server (FastAPI app from `build_app`, served by uvicorn).

    distllm serve --model PATH [--placement placement.json | --tp N --pp N ...]
        [--host 127.0.0.1] [--port 8400] [--api-key KEY] [--max-queued-requests N]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging

from distllm import envs
from distllm.config import EngineConfig, ParallelConfig

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distllm serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from distllm.entrypoints.http_common import ServerConfig

    EngineConfig.add_cli_args(parser)
    ServerConfig.add_cli_args(parser)
    g = parser.add_argument_group("serving")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    g.add_argument("--port", type=int, default=8400)
    g.add_argument("--placement", default=None,
                   help="placement JSON from `distllm plan` (overrides --tp/--pp)")
    g.add_argument("--max-queued-requests", type=int, default=None,
                   help="requests waiting for a first token beyond which new ones get 503")
    g.add_argument("--log-level", default=envs.log_level().lower(),
                   choices=["debug", "info", "warning", "error"])
    g.add_argument("--access-log", action="store_true", help="log every HTTP request")
    return parser


def engine_config_from_args(ns: argparse.Namespace) -> EngineConfig:
    """EngineConfig from the flags; a placement file sets the parallelism. Only colocated
    placements with one instance run until the disaggregated engine lands."""
    config = EngineConfig.from_cli_args(ns)
    if ns.placement is None:
        return config
    from distllm.placement import load_placement

    placement = load_placement(ns.placement)
    if placement.mode != "colocated" or placement.colocated.instances != 1:
        raise ValueError(f"placement {ns.placement}: only colocated placements with one "
                         "instance can be served by the colocated engine (the disaggregated "
                         "engine is not available yet)")
    parallel = ParallelConfig(tp=placement.colocated.tp, pp=placement.colocated.pp)
    return dataclasses.replace(config, parallel=parallel)


def run_server(ns: argparse.Namespace) -> None:
    import uvicorn

    from distllm.engine.async_llm import AsyncLLM
    from distllm.entrypoints.api_server import build_app
    from distllm.entrypoints.http_common import ServerConfig

    engine = AsyncLLM.from_engine_config(engine_config_from_args(ns),
                                         max_queued_requests=ns.max_queued_requests)
    try:
        app = build_app(engine, ServerConfig.from_cli_args(ns))
        logger.info("serving %s on http://%s:%d", ns.model, ns.host, ns.port)
        config = uvicorn.Config(app, host=ns.host, port=ns.port, log_level=ns.log_level,
                                access_log=ns.access_log, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run()
    except KeyboardInterrupt:  # NOTE: uvicorn re-raises SIGINT after its graceful shutdown
        logger.info("interrupted: server stopped")
    finally:
        engine.shutdown()


def main(argv: list[str] | None = None) -> int:
    ns = make_parser().parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_server(ns)
    except (ValueError, FileNotFoundError) as e:
        logger.error("distllm serve: %s", e)
        return 2
    return 0
