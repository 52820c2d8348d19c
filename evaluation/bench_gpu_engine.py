"""The engine on one CUDA GPU (H100/H200): offline throughput of `LLM.generate` vs transformers'
`generate` on the same GPU, model and 500 ShareGPT-shaped requests (goal >= 3x output tokens/s),
and TTFT/TPOT of 1 prefill + 1 decode instance sharing the GPU vs one colocated instance at a few
Poisson rates (through `distllm serve` + evaluation/benchmark_serving.py).

    python -m evaluation.bench_gpu_engine [--models opt-1.3b,llama3-8b] [--num-requests 500]
        [--rates 1,2,4,8] [--skip-serving] [-o out/bench_gpu_engine.json]

Models are dummy-weight (seeded random) models with the real dimensions; only config.json and a
tiny tokenizer are written. Each measured side runs in its own process so GPU memory is clean.
transformers runs static left-padded batches sorted by length (its best case: little padding);
only the requested output tokens count. Without CUDA it exits 2 and measures nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.bench_offline import make_prompts, sharegpt_shaped_lengths

# preset -> HF config fields of the real model (weights are dummy)
MODELS: dict[str, dict] = {
    "opt-1.3b": dict(model_type="opt", architectures=["OPTForCausalLM"], hidden_size=2048,
                     ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32,
                     max_position_embeddings=2048, do_layer_norm_before=True,
                     word_embed_proj_dim=2048, activation_function="relu", enable_bias=True,
                     tie_word_embeddings=True, vocab_size=50272),
    "llama3-8b": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=4096,
                      intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
                      rope_theta=500000.0, tie_word_embeddings=False, hidden_act="silu",
                      vocab_size=128256),
}
GOAL_SPEEDUP = 3.0
NO_CUDA_EXIT = 2


def make_model_dir(out: Path, preset: str) -> Path:
    """config.json + a tiny BPE tokenizer (ids beyond it decode to nothing); no weights."""
    from distllm.testing import _write_config, _write_tokenizer

    fields = dict(MODELS[preset])
    family = fields["model_type"]
    out.mkdir(parents=True, exist_ok=True)
    tok = _write_tokenizer(out, family, 512)
    _write_config(out, {**fields, **tok})
    return out


def run_distllm(model_dir: str, prompts: list[list[int]], outs: list[int],
                opts: dict) -> dict:
    """Child process: seconds of one `LLM.generate` over all requests (after a warm-up)."""
    from distllm import LLM, SamplingParams

    llm = LLM(model=model_dir, device="cuda", dtype=opts["dtype"], load_format="dummy",
              max_num_seqs=opts["max_num_seqs"], enforce_eager=opts["enforce_eager"],
              max_num_batched_tokens=opts["max_num_batched_tokens"],
              max_model_len=opts["max_len"], gpu_memory_utilization=0.9)
    params = [SamplingParams(max_tokens=o, temperature=0.0, ignore_eos=True) for o in outs]
    llm.generate(prompts[:4], params[:4], use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    res = llm.generate(prompts, params, use_tqdm=True)
    elapsed = time.perf_counter() - t0
    if [len(r.token_ids) for r in res] != outs:
        raise RuntimeError("distllm produced the wrong output lengths")
    blocks = llm.engine.block_manager.num_blocks
    return {"elapsed_s": elapsed, "num_kv_blocks": blocks}


def run_transformers(model_dir: str, prompts: list[list[int]], outs: list[int],
                     opts: dict) -> dict:
    """Child process: seconds of `generate` in static batches sorted by length."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(torch, opts["dtype"])
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir),
                                                 dtype=dtype).eval()
    order = sorted(range(len(prompts)), key=lambda i: (outs[i], len(prompts[i])))
    bs = opts["hf_batch_size"]
    batches = [order[i:i + bs] for i in range(0, len(order), bs)]
    _hf_batch(model, [prompts[i] for i in batches[0][:4]], 4)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for batch in batches:
        _hf_batch(model, [prompts[i] for i in batch], max(outs[i] for i in batch))
    torch.cuda.synchronize()
    return {"elapsed_s": time.perf_counter() - t0}


def _hf_batch(model, batch: list[list[int]], max_new: int) -> None:  # noqa: ANN001
    import torch

    width = max(len(p) for p in batch)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in batch], device="cuda")
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device="cuda")
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
                       min_new_tokens=max_new, do_sample=False, pad_token_id=0)


def _in_child(fn, *args):  # noqa: ANN001, ANN202 - one clean CUDA process per measured side
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def offline(preset: str, model_dir: Path, args: argparse.Namespace) -> dict:
    """Both sides on the same requests; output tokens/s and the speedup."""
    lengths = sharegpt_shaped_lengths(args.num_requests, args.max_len, args.seed)
    outs = [o for _, o in lengths]
    prompts = make_prompts(lengths, MODELS[preset]["vocab_size"], args.seed)
    opts = {k: getattr(args, k) for k in ("dtype", "max_num_seqs", "max_num_batched_tokens",
                                          "max_len", "enforce_eager", "hf_batch_size")}
    ours = _in_child(run_distllm, str(model_dir), prompts, outs, opts)
    num_out = sum(outs)
    row = {"model": preset, "num_requests": len(lengths), "output_tokens": num_out,
           "prompt_tokens": sum(p for p, _ in lengths), "distllm_s": ours["elapsed_s"],
           "distllm_tok_s": num_out / ours["elapsed_s"], "num_kv_blocks": ours["num_kv_blocks"]}
    if not args.skip_transformers:
        n = args.hf_max_requests or len(prompts)
        hf = _in_child(run_transformers, str(model_dir), prompts[:n], outs[:n], opts)
        row.update(hf_requests=n, hf_s=hf["elapsed_s"], hf_tok_s=sum(outs[:n]) / hf["elapsed_s"])
        row["speedup"] = row["distllm_tok_s"] / row["hf_tok_s"]
        row["meets_goal"] = row["speedup"] >= GOAL_SPEEDUP
    return row


# serving mode -> `distllm serve` flags; both use the whole GPU (1P+1D: half each)
SERVE_MODES = {
    "colocated": ["--mode", "colocated", "--gpu-memory-utilization", "0.9"],
    "1P+1D": ["--mode", "disaggregated", "--gpu-memory-utilization", "0.45"],
}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc, timeout_s: float) -> None:  # noqa: ANN001
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"distllm serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(2.0)
    raise RuntimeError(f"distllm serve not healthy after {timeout_s:.0f} s")


def serving(model_dir: Path, mode: str, args: argparse.Namespace, out_dir: Path) -> list[dict]:
    """One server in `mode`, the load generator at every rate; one summary row per rate."""
    import subprocess

    from evaluation import benchmark_serving
    from evaluation.exp_format import load_exp

    port = _free_port()
    cmd = [sys.executable, "-m", "distllm", "serve", "--model", str(model_dir), "--device",
           "cuda", "--load-format", "dummy", "--dtype", args.dtype, "--port", str(port),
           "--max-model-len", str(args.max_len), "--max-num-seqs", str(args.max_num_seqs),
           "--max-num-batched-tokens", str(args.max_num_batched_tokens), *SERVE_MODES[mode]]
    if args.enforce_eager:
        cmd.append("--enforce-eager")
    exp_dir = out_dir / mode.replace("+", "")
    proc = subprocess.Popen(cmd)
    try:
        _wait_healthy(port, proc, args.server_timeout_s)
        rounds = str([(args.serving_prompts, r) for r in args.rates])
        rc = benchmark_serving.main([
            "--backend", "distllm", "--port", str(port), "--dataset", "synthetic:sharegpt",
            "--tokenizer", str(model_dir), "--num-prompts-req-rates", rounds, "--seed",
            str(args.seed), "--output-dir", str(exp_dir), "--label", mode, "--no-progress"])
        if rc != 0:
            raise RuntimeError(f"benchmark_serving exited with {rc}")
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    runs = sorted((load_exp(p) for p in exp_dir.glob("*.exp")), key=lambda r: r.rate)
    keys = ("mean_ttft_ms", "p90_ttft_ms", "mean_tpot_ms", "p90_tpot_ms", "output_throughput")
    return [{"mode": mode, "rate": r.rate, **{k: r.summary.get(k) for k in keys}} for r in runs]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="opt-1.3b,llama3-8b",
                   type=lambda s: [m for m in s.split(",") if m],
                   help=f"comma-separated presets from {sorted(MODELS)}")
    p.add_argument("--num-requests", type=int, default=500)
    p.add_argument("--max-len", type=int, default=2048, help="prompt + output <= this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--enforce-eager", action="store_true", help="distllm without CUDA graphs")
    p.add_argument("--hf-batch-size", type=int, default=32)
    p.add_argument("--hf-max-requests", type=int, default=None,
                   help="transformers on the first N requests only (tokens/s is a rate)")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--skip-offline", action="store_true")
    p.add_argument("--skip-serving", action="store_true")
    p.add_argument("--serving-model", default="opt-1.3b", choices=sorted(MODELS))
    p.add_argument("--rates", default=[1.0, 2.0, 4.0, 8.0],
                   type=lambda s: [float(r) for r in s.split(",") if r], help="requests/s")
    p.add_argument("--serving-prompts", type=int, default=200, help="requests per rate")
    p.add_argument("--server-timeout-s", type=float, default=900.0)
    p.add_argument("-o", "--output", default="out/bench_gpu_engine.json")
    args = p.parse_args(argv)
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        p.error(f"unknown model preset(s) {unknown}; choose from {sorted(MODELS)}")
    if args.max_len > min(MODELS[m]["max_position_embeddings"] for m in args.models):
        p.error("--max-len exceeds a model's max_position_embeddings")
    return args


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not has_cuda():
        print("bench_gpu_engine: no CUDA GPU here (torch.cuda.is_available() is False); "
              "nothing measured", file=sys.stderr)
        return NO_CUDA_EXIT
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = {"meta": _meta(args), "offline": [], "serving": []}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {m: make_model_dir(Path(tmp) / m, m) for m in {*args.models, args.serving_model}}
        if not args.skip_offline:
            report["offline"] = [offline(m, dirs[m], args) for m in args.models]
        if not args.skip_serving:
            for mode in SERVE_MODES:
                report["serving"] += serving(dirs[args.serving_model], mode, args, Path(tmp))
    print(format_report(report))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _meta(args: argparse.Namespace) -> dict:
    import torch

    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "start_time": time.time(), **{k: v for k, v in vars(args).items()}}


def _fmt(x: object, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_report(report: dict) -> str:
    lines = [f"GPU: {report['meta']['gpu']}", "",
             f"{'model':<10} {'reqs':>5} {'out tok':>8} {'distllm tok/s':>14} "
             f"{'HF tok/s':>9} {'speedup':>8}  goal >= {GOAL_SPEEDUP:.0f}x"]
    for r in report["offline"]:
        lines.append(f"{r['model']:<10} {r['num_requests']:>5} {r['output_tokens']:>8} "
                     f"{_fmt(r['distllm_tok_s']):>14} {_fmt(r.get('hf_tok_s')):>9} "
                     f"{_fmt(r.get('speedup'), '.2f'):>8}  {r.get('meets_goal', '-')}")
    if report["serving"]:
        lines += ["", f"{'mode':<10} {'rate':>5} {'TTFT mean':>10} {'TTFT p90':>9} "
                      f"{'TPOT mean':>10} {'TPOT p90':>9} {'out tok/s':>10}  (ms)"]
        for r in report["serving"]:
            lines.append(f"{r['mode']:<10} {r['rate']:>5.1f} {_fmt(r['mean_ttft_ms']):>10} "
                         f"{_fmt(r['p90_ttft_ms']):>9} {_fmt(r['mean_tpot_ms']):>10} "
                         f"{_fmt(r['p90_tpot_ms']):>9} {_fmt(r['output_throughput']):>10}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
