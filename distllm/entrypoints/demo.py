"""`distllm demo` (what `make demo` runs): the main job end to end on a built-in tiny model.

Stages, each printed as it runs:
  1. model     a seeded random Llama-3-style model in HF format (built once, cached under --workdir)
  2. workload  ShareGPT-shaped synthetic requests, lengths counted by the model's tokenizer
  3. generate  offline continuous-batching generation through the `LLM` API -> throughput line
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

DEMO_MODEL = dict(
    arch="llama3",
    seed=0,
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)
# ShareGPT-shaped lengths, scaled to the tiny model (prompt mean 755 -> 190, output 200 -> 50).
WORKLOAD = dict(prompt=("lognormal", 190, 160), output=("lognormal", 50, 50), max_context=768)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distllm demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="out/demo", help="model, dataset and results go here")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    return p


def _stage(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def ensure_model(workdir: Path) -> Path:
    from distllm.testing import make_tiny_model

    model_dir = workdir / "model"
    stamp = model_dir / "demo-config.json"
    if stamp.exists() and json.loads(stamp.read_text()) == DEMO_MODEL:
        print(f"reusing {model_dir}")
        return model_dir
    overrides = {k: v for k, v in DEMO_MODEL.items() if k not in ("arch", "seed")}
    make_tiny_model(model_dir, arch=DEMO_MODEL["arch"], seed=DEMO_MODEL["seed"], **overrides)
    stamp.write_text(json.dumps(DEMO_MODEL))
    print(
        f"built {model_dir} ({DEMO_MODEL['num_hidden_layers']} layers, hidden "
        f"{DEMO_MODEL['hidden_size']}, GQA {DEMO_MODEL['num_attention_heads']}/"
        f"{DEMO_MODEL['num_key_value_heads']})"
    )
    return model_dir


def make_workload(model_dir: Path, workdir: Path, n: int, seed: int) -> Path:
    from dataset.common import load_tokenizer, write_dataset
    from dataset.prepare_synthetic import LengthDist, generate

    counter = load_tokenizer(model_dir)
    reqs = generate(
        n,
        LengthDist(*WORKLOAD["prompt"]),
        LengthDist(*WORKLOAD["output"]),
        seed,
        counter=counter,
        max_context=WORKLOAD["max_context"],
    )
    path = workdir / "workload.jsonl"
    write_dataset(
        path,
        reqs,
        {
            "source": "synthetic",
            "preset": "sharegpt-scaled",
            "seed": seed,
            "tokenizer": str(model_dir),
        }
        | WORKLOAD,
    )
    lens = [r.prompt_len for r in reqs]
    outs = [r.output_len for r in reqs]
    print(
        f"{path}: {n} requests, prompt mean {sum(lens) / n:.0f} tokens, output mean "
        f"{sum(outs) / n:.0f} tokens"
    )
    return path


def run_generate(model_dir: Path, dataset: Path) -> dict:
    from distllm.entrypoints import generate

    parser = generate.build_parser()
    args = parser.parse_args(
        [
            "--model",
            str(model_dir),
            "--dataset",
            str(dataset),
            "--ignore-eos",
            "--num-kv-blocks",
            "2048",
        ]
    )
    return generate.run(args, parser)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _stage("1/3 model")
    model_dir = ensure_model(workdir)
    _stage("2/3 workload")
    dataset = make_workload(model_dir, workdir, args.num_requests, args.seed)
    _stage("3/3 generate (colocated engine, continuous batching)")
    stats = run_generate(model_dir, dataset)
    (workdir / "report.json").write_text(json.dumps({"generate": stats}, indent=2) + "\n")
    print(f"\ndemo done in {time.perf_counter() - t0:.1f} s; report in {workdir / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
