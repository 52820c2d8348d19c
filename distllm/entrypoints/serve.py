"""`distllm serve`: the HTTP API server (FastAPI app from `build_app`, served by uvicorn).

    distllm serve --model PATH [--placement placement.json | --mode disaggregated
        --prefill-tp N --decode-tp N ... | --tp N]
        [--host 127.0.0.1] [--port 8400] [--api-key KEY] [--max-queued-requests N]
"""
from __future__ import annotations

import argparse
import logging
import signal

from distllm import envs
from distllm.config import EngineConfig
from distllm.disagg_config import DisaggConfig

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distllm serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from distllm.entrypoints.http_common import ServerConfig

    EngineConfig.add_cli_args(parser)
    DisaggConfig.add_cli_args(parser)
    ServerConfig.add_cli_args(parser)
    g = parser.add_argument_group("serving")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    g.add_argument("--port", type=int, default=8400)
    g.add_argument("--placement", default=None,
                   help="placement JSON from `distllm plan` (overrides the stage flags)")
    g.add_argument("--max-queued-requests", type=int, default=None,
                   help="requests waiting for a first token beyond which new ones get 503")
    g.add_argument("--log-level", default=envs.log_level().lower(),
                   choices=["debug", "info", "warning", "error"])
    g.add_argument("--access-log", action="store_true", help="log every HTTP request")
    g.add_argument("--drain-timeout-s", type=float, default=10.0,
                   help="on SIGTERM/SIGINT, how long in-flight requests may finish before "
                        "they are aborted (each still gets a response)")
    return parser


def engine_configs_from_args(ns: argparse.Namespace) -> tuple[EngineConfig, DisaggConfig | None]:
    """The engine config, plus the Ray engine's DisaggConfig when --placement or --mode asks
    for it (None: one in-process colocated engine)."""
    return EngineConfig.from_cli_args(ns), DisaggConfig.from_cli_args(ns)


def _log_interrupt(signum: int, frame: object) -> None:
    logger.info("interrupted: server stopped")


def run_server(ns: argparse.Namespace) -> None:
    import uvicorn

    from distllm.engine.async_disagg import build_async_llm
    from distllm.entrypoints.api_server import build_app
    from distllm.entrypoints.http_common import ServerConfig
    from distllm.entrypoints.shutdown import DrainingServer

    config, disagg = engine_configs_from_args(ns)
    engine = build_async_llm(config, disagg, max_queued_requests=ns.max_queued_requests)
    try:
        app = build_app(engine, ServerConfig.from_cli_args(ns))
        logger.info("serving %s on http://%s:%d", ns.model, ns.host, ns.port)
        server = uvicorn.Config(app, host=ns.host, port=ns.port, log_level=ns.log_level,
                                access_log=ns.access_log, timeout_graceful_shutdown=5)
        # NOTE: uvicorn re-raises a captured SIGINT after its graceful shutdown; with this handler
        # in place that ends in a log line instead of a KeyboardInterrupt traceback.
        signal.signal(signal.SIGINT, _log_interrupt)
        signal.signal(signal.SIGTERM, _log_interrupt)  # exit 0 after the drain, engine shut down
        DrainingServer(server, engine, ns.drain_timeout_s).run()
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
