"""Synthetic datasets: exact prompt lengths with a tokenizer, distribution shapes, presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataset.common import load_tokenizer, read_dataset, read_meta
from dataset.prepare_synthetic import PRESETS, LengthDist, generate
from dataset.prepare_synthetic import main as synthetic_main


def test_fixed_lengths_are_exact_with_tokenizer(tokenizer_dir: Path) -> None:
    counter = load_tokenizer(tokenizer_dir)
    reqs = generate(20, LengthDist("fixed", 17), LengthDist("fixed", 5), seed=1, counter=counter)
    assert all(r.prompt_len == 17 and r.output_len == 5 for r in reqs)
    assert all(counter.count(r.prompt) == 17 for r in reqs)
    assert len({r.prompt for r in reqs}) == 20  # distinct prompts: no accidental prefix sharing


def test_uniform_and_lognormal_shapes() -> None:
    rng = np.random.default_rng(0)
    u = LengthDist.parse("uniform:10:20").sample(5000, rng, 4096)
    assert u.min() == 10 and u.max() == 20
    x = LengthDist.parse("lognormal:300:200").sample(20000, rng, 100000)
    assert abs(x.mean() - 300) < 10 and abs(x.std() - 200) < 15


def test_max_context_respected_and_seeded() -> None:
    p, o = PRESETS["sharegpt"]
    a = generate(300, p, o, seed=5, max_context=512)
    assert all(r.prompt_len + r.output_len < 512 for r in a)
    assert a == generate(300, p, o, seed=5, max_context=512)
    assert a != generate(300, p, o, seed=6, max_context=512)


@pytest.mark.parametrize(
    "spec", ["fixed", "fixed:0", "uniform:5", "uniform:9:3", "gauss:1:2", "lognormal:a:b"]
)
def test_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        LengthDist.parse(spec)


def test_main_preset_override(tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    argv = [
        "--preset",
        "humaneval",
        "--output-len",
        "fixed:32",
        "--num-requests",
        "50",
        "--output",
        str(out),
    ]
    assert synthetic_main(argv) == 0
    reqs = read_dataset(out)
    assert len(reqs) == 50 and all(r.output_len == 32 for r in reqs)
    meta = read_meta(out)
    assert meta["preset"] == "humaneval" and meta["output_dist"]["kind"] == "fixed"
    with pytest.raises(SystemExit):
        synthetic_main(["--output", str(out)])
