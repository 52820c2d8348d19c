"""Per-token overhead of HTTP streaming vs in-process `AsyncLLM` on the same workload.

The same requests (greedy, ignore_eos, fixed output length, all sent at once) run (a) in this
process through `AsyncLLM.generate` and (b) through a `distllm serve` subprocess with the same
engine flags, read by aiohttp clients over /generate (NDJSON) and /v1/completions (SSE). Every
token gets a consumer-side timestamp; TPOT = (last - first) / (n - 1) per request, mean over
requests, median over rounds. The overhead is TPOT(HTTP) - TPOT(in-process); the goal is
<= 0.5 ms or 5 %, whichever is larger. The CPU seconds per token of the serving process (engine
thread + event loop; in-process: engine + consumer) are reported too: unlike TPOT they barely
move when other jobs share the machine.

    python -m evaluation.bench_http_overhead [--model DIR] [--num-requests 8] [--output-len 64]
        [--rounds 7] [--synthetic-step-ms 10] [--output results/bench_http_overhead.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import aiohttp

PROMPTS = ["Once upon a time there was", "The weather today is", "Science is the study of",
           "Good morning! How are you", "Large language models predict", "Water boils at",
           "Please tell me a story about", "The quick brown fox"]


class SyntheticEngine:
    """Stands in for LLMEngine (`--synthetic-step-ms`): each step sleeps like a forward that
    waits on a GPU (GIL released) and gives every request one token, so the HTTP layer's own
    cost is measured without the CPU model competing for the GIL."""

    def __init__(self, model_dir: str, step_ms: float, max_model_len: int = 512) -> None:
        from distllm.tokenizer import Tokenizer

        self.tokenizer = Tokenizer.from_pretrained(model_dir)
        self.config = SimpleNamespace(model=SimpleNamespace(max_seq_len=max_model_len))
        self.step_s = step_ms / 1e3
        self._requests: dict[str, list] = {}  # request id -> [prompt ids, output ids, params]
        self._aborted: list[str] = []

    def add_request(self, request_id: str, prompt: str | list[int], params: object) -> None:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self._requests[request_id] = [ids, [], params]

    def abort_request(self, request_ids: str | list[str]) -> None:
        for request_id in [request_ids] if isinstance(request_ids, str) else request_ids:
            if self._requests.pop(request_id, None) is not None:
                self._aborted.append(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests or self._aborted)

    def stats(self) -> dict[str, int]:
        return {"num_running": len(self._requests), "num_waiting": 0}

    def step(self) -> list:
        from distllm.engine.outputs import RequestOutput

        time.sleep(self.step_s)
        now, outputs = time.monotonic(), []
        for request_id in self._aborted:
            outputs.append(RequestOutput(request_id, None, [0], "", [], True, "abort"))
        self._aborted = []
        for request_id, (ids, out, params) in list(self._requests.items()):
            out.append(300 + len(out) % 100)
            done = len(out) >= params.max_tokens
            outputs.append(RequestOutput(
                request_id, None, ids, "", list(out), done, "length" if done else None,
                new_text=self.tokenizer.decode(out[-1:]), token_times=[now] * len(out)))
            if done:
                del self._requests[request_id]
        return outputs


def serve_synthetic(ns: argparse.Namespace) -> None:
    """The HTTP server of the synthetic variant (run in a subprocess)."""
    import uvicorn

    from distllm.engine.async_llm import AsyncLLM
    from distllm.entrypoints.api_server import build_app

    engine = AsyncLLM(SyntheticEngine(ns.model, ns.synthetic_step_ms))
    try:
        uvicorn.run(build_app(engine), host="127.0.0.1", port=ns.serve_synthetic,
                    log_level="warning")
    finally:
        engine.shutdown()


def engine_flags(ns: argparse.Namespace) -> list[str]:
    return ["--model", ns.model, "--num-kv-blocks", str(ns.num_kv_blocks), "--block-size", "16",
            "--max-num-seqs", str(max(ns.num_requests, 1)), "--max-model-len", "512"]


def summarize(token_times: list[list[float]], starts: list[float], output_len: int) -> dict:
    """Mean TPOT and TTFT (ms) from per-request consumer-side arrival times (every request
    generates exactly `output_len` tokens; an SSE chunk may carry several)."""
    tpots = [(t[-1] - t[0]) / (output_len - 1) for t in token_times if len(t) > 1]
    ttfts = [t[0] - s for t, s in zip(token_times, starts, strict=True) if t]
    return {"tpot_ms": 1e3 * statistics.mean(tpots), "ttft_ms": 1e3 * statistics.mean(ttfts),
            "num_arrivals": sum(len(t) for t in token_times)}


async def run_in_process(engine: object, ns: argparse.Namespace) -> dict:
    from distllm.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=ns.output_len, temperature=0.0, ignore_eos=True)

    async def one(i: int) -> list[float]:
        times: list[float] = []
        seen = 0
        async for out in engine.generate(PROMPTS[i % len(PROMPTS)], params):
            now = time.perf_counter()
            times += [now] * (len(out.token_ids) - seen)
            seen = len(out.token_ids)
        return times

    starts = [time.perf_counter()] * ns.num_requests
    times = await asyncio.gather(*(one(i) for i in range(ns.num_requests)))
    return summarize(times, starts, ns.output_len)


async def run_http(url: str, ns: argparse.Namespace, api: str) -> dict:
    async def one(session: aiohttp.ClientSession, i: int) -> list[float]:
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": ns.output_len,
                "temperature": 0.0, "ignore_eos": True, "stream": True}
        times: list[float] = []
        path = "/generate" if api == "generate" else "/v1/completions"
        async with session.post(url + path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            async for raw in resp.content:
                now = time.perf_counter()
                times += [now] * count_tokens(raw, api)
        return times

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        starts = [time.perf_counter()] * ns.num_requests
        times = await asyncio.gather(*(one(session, i) for i in range(ns.num_requests)))
    return summarize(times, starts, ns.output_len)


def count_tokens(raw: bytes, api: str) -> int:
    line = raw.strip()
    if api == "generate":
        return len(json.loads(line)["token_ids"]) if line else 0
    if not line.startswith(b"data:") or line == b"data: [DONE]":
        return 0
    choices = json.loads(line[5:])["choices"]
    return 1 if choices and (choices[0]["text"] or choices[0]["finish_reason"]) else 0


def start_server(ns: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "distllm", "serve", *engine_flags(ns), "--port", str(port),
           "--log-level", "warning"]
    if ns.synthetic_step_ms is not None:
        cmd = [sys.executable, "-m", "evaluation.bench_http_overhead", "--model", ns.model,
               "--synthetic-step-ms", str(ns.synthetic_step_ms), "--serve-synthetic", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the distllm server did not start")


def process_cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system, all threads) of this process or of `pid` (Linux /proc)."""
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(run: object, pid: int | None, ns: argparse.Namespace) -> dict:
    """Run one round; add the serving process's CPU seconds per output token (microseconds)."""
    cpu0 = process_cpu_s(pid)
    result = asyncio.run(run)
    num_tokens = ns.num_requests * ns.output_len
    return {**result, "cpu_us_per_token": 1e6 * (process_cpu_s(pid) - cpu0) / num_tokens}


def bench(ns: argparse.Namespace) -> dict[str, list[dict]]:
    from distllm.config import EngineConfig
    from distllm.engine.async_llm import AsyncLLM
    from distllm.entrypoints.serve import make_parser

    if ns.synthetic_step_ms is not None:
        engine = AsyncLLM(SyntheticEngine(ns.model, ns.synthetic_step_ms))
    else:
        config = EngineConfig.from_cli_args(make_parser().parse_args(engine_flags(ns)))
        engine = AsyncLLM.from_engine_config(config)
    proc, url = start_server(ns)
    results: dict[str, list[dict]] = {"in_process": [], "http_generate": [], "http_openai": []}
    try:
        asyncio.run(run_in_process(engine, ns))  # warm-up
        asyncio.run(run_http(url, ns, "generate"))
        for _ in range(ns.rounds):  # interleaved so load changes hit every variant alike
            results["in_process"].append(measured(run_in_process(engine, ns), None, ns))
            for api in ("generate", "openai"):
                results[f"http_{api}"].append(measured(run_http(url, ns, api), proc.pid, ns))
    finally:
        engine.shutdown()
        proc.terminate()
        proc.wait(30)
    return results


def report(results: dict[str, list[dict]], ns: argparse.Namespace) -> dict:
    # NOTE: medians over rounds: the machine may be shared, and a busy neighbour hits a round.
    metrics = ("tpot_ms", "ttft_ms", "cpu_us_per_token")
    means = {k: {m: statistics.median(r[m] for r in rs) for m in metrics}
             for k, rs in results.items()}
    base = means["in_process"]["tpot_ms"]
    rows = []
    for name, m in means.items():
        over = m["tpot_ms"] - base
        goal = max(0.5, 0.05 * base)
        rows.append({"variant": name, **m, "overhead_ms_per_token": over,
                     "overhead_pct": 100 * over / base, "meets_goal": over <= goal})
    print(f"{'variant':<15}{'TPOT ms':>10}{'TTFT ms':>10}{'overhead ms/tok':>17}{'%':>8}"
          f"{'server CPU us/tok':>19}  goal")
    for r in rows:
        print(f"{r['variant']:<15}{r['tpot_ms']:>10.3f}{r['ttft_ms']:>10.2f}"
              f"{r['overhead_ms_per_token']:>17.3f}{r['overhead_pct']:>8.1f}"
              f"{r['cpu_us_per_token']:>19.1f}  {'ok' if r['meets_goal'] else 'MISSED'}")
    return {"config": {k: v for k, v in vars(ns).items() if k != "output"}, "rows": rows,
            "rounds": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model dir (default: a tiny seeded Llama)")
    p.add_argument("--num-requests", type=int, default=8)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--num-kv-blocks", type=int, default=512)
    p.add_argument("--synthetic-step-ms", type=float, default=None,
                   help="replace the model by a synthetic engine whose step sleeps this long")
    p.add_argument("--serve-synthetic", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--output", default="results/bench_http_overhead.json")
    ns = p.parse_args(argv)
    if ns.serve_synthetic is not None:
        serve_synthetic(ns)
        return 0
    if ns.model is None:
        from distllm.testing import make_tiny_model

        ns.model = str(make_tiny_model(Path(tempfile.mkdtemp()) / "tiny", arch="llama",
                                       hidden_size=256, intermediate_size=512,
                                       num_hidden_layers=4))
    out = report(bench(ns), ns)
    Path(ns.output).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
