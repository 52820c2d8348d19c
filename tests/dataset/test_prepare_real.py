"""ShareGPT / HumanEval / LongBench preparation on small hand-built files in each real format."""

from __future__ import annotations

import json
from pathlib import Path

from dataset.common import load_tokenizer, read_dataset, read_meta
from dataset.prepare_humaneval import convert_humaneval
from dataset.prepare_humaneval import main as humaneval_main
from dataset.prepare_longbench import LongBenchFilter, convert_longbench, find_jsonl_files
from dataset.prepare_longbench import main as longbench_main
from dataset.prepare_sharegpt import ShareGPTFilter, convert_sharegpt
from dataset.prepare_sharegpt import main as sharegpt_main


def _conv(cid: str, *texts: str) -> dict:
    roles = ["human", "gpt"]
    return {
        "id": cid,
        "conversations": [{"from": roles[i % 2], "value": t} for i, t in enumerate(texts)],
    }


SHAREGPT = [
    _conv("two-turns", "the of and to", "in is was for"),  # < min_turns (3)
    _conv("ok", "the of and to in", "is was for on", "that"),  # kept with 1 prompt turn
    _conv("tiny", "x", "y", "x"),  # both lengths < 4 -> pruned
    _conv("long", " ".join(["alpha"] * 30), " ".join(["beta"] * 30), "x"),  # reaches context
]


def test_sharegpt_filters_exact(tokenizer_dir: Path) -> None:
    counter = load_tokenizer(tokenizer_dir)
    cfg = ShareGPTFilter(min_turns=3, max_prompt_turns=1, max_context=50)
    reqs = convert_sharegpt(SHAREGPT, counter, cfg, seed=0)
    assert [r.id for r in reqs] == ["ok"]
    assert (reqs[0].prompt, reqs[0].prompt_len, reqs[0].output_len) == ("the of and to in", 6, 5)


def test_sharegpt_prompt_turns_random_but_seeded(tokenizer_dir: Path) -> None:
    counter = load_tokenizer(tokenizer_dir)
    words = "the of and to in is was for on that".split()
    data = [_conv(str(i), *words[: 3 + i % 7]) for i in range(60)]
    cfg = ShareGPTFilter(min_turns=3, min_prompt_turns=1, max_prompt_turns=4, min_len=0)
    a = convert_sharegpt(data, counter, cfg, seed=7)
    assert a == convert_sharegpt(data, counter, cfg, seed=7)
    turns_used = set()
    for conv, req in zip(data, a, strict=True):
        k = req.prompt.count("\n") + 1
        texts = [t["value"] for t in conv["conversations"]]
        assert 1 <= k <= min(len(texts) - 1, 4)
        assert req.prompt == "\n".join(texts[:k]) and req.output_len == 2  # BOS + one word
        turns_used.add(k)
    assert turns_used == {1, 2, 3, 4}


def test_sharegpt_main_writes_jsonl_and_meta(tmp_path: Path, tokenizer_dir: Path) -> None:
    src = tmp_path / "ShareGPT_V3_unfiltered_cleaned_split.json"
    src.write_text(json.dumps(SHAREGPT))
    out = tmp_path / "sg.jsonl"
    argv = [
        "--input",
        str(src),
        "--tokenizer",
        str(tokenizer_dir),
        "--output",
        str(out),
        "--max-prompt-turns",
        "1",
        "--max-context",
        "50",
    ]
    assert sharegpt_main(argv) == 0
    reqs = read_dataset(out)
    assert [(r.prompt_len, r.output_len) for r in reqs] == [(6, 5)]
    meta = read_meta(out)
    assert meta["source"] == "sharegpt" and meta["num_requests"] == 1
    assert meta["num_source_records"] == 4 and meta["filters"]["max_context"] == 50
    assert meta["stats"]["prompt_len"]["mean"] == 6


HUMANEVAL = [
    {"task_id": "HumanEval/0", "prompt": "def alpha x", "canonical_solution": "return x"},
    {"task_id": "HumanEval/1", "prompt": "def beta y if x", "canonical_solution": "return y y"},
    {"task_id": "HumanEval/2", "prompt": " ".join(["x"] * 40), "canonical_solution": "return"},
]


def test_humaneval_filter_and_repeat(tmp_path: Path, tokenizer_dir: Path) -> None:
    counter = load_tokenizer(tokenizer_dir)
    reqs = convert_humaneval(HUMANEVAL, counter, max_context=20, repeat=2)
    assert [(r.id, r.prompt_len, r.output_len) for r in reqs] == [
        ("HumanEval/0", 4, 3),
        ("HumanEval/1", 6, 4),
    ] * 2
    src = tmp_path / "HumanEval.jsonl"
    src.write_text("\n".join(json.dumps(p) for p in HUMANEVAL) + "\n")
    out = tmp_path / "he.jsonl"
    argv = [
        "--input",
        str(src),
        "--tokenizer",
        str(tokenizer_dir),
        "--output",
        str(out),
        "--max-context",
        "20",
    ]
    assert humaneval_main(argv) == 0
    assert len(read_dataset(out)) == 2
    stats = read_meta(out)["stats"]
    assert stats["prompt_len"]["mean"] == 5 and stats["output_len"]["max"] == 4


def _longbench_folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    ctx = " ".join(["the of and to in"] * 20)  # 100 words
    recs_a = [
        {"_id": f"a{i}", "input": "q", "context": ctx, "answers": ["is was for"]} for i in range(30)
    ]
    recs_b = [
        {"_id": "b0", "input": "q", "context": ctx, "answers": [" ".join(["x"] * 60)]},
        {"_id": "b1", "input": "q", "context": "alpha beta", "answers": ["x"]},
    ]
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs_a))
    (root / "sub" / "sum.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs_b))
    (root / "README.md").write_text("not data")
    return root


def test_longbench_truncation_range(tmp_path: Path, tokenizer_dir: Path) -> None:
    counter = load_tokenizer(tokenizer_dir)
    files = find_jsonl_files(_longbench_folder(tmp_path / "lb"))
    assert [f.name for f in files] == ["qa.jsonl", "sum.jsonl"]
    cfg = LongBenchFilter(min_prompt_len=10, max_prompt_len=20, max_context=64)
    reqs = convert_longbench(files, counter, cfg, seed=3)
    by_id = {r.id: r for r in reqs}
    assert "b0" not in by_id  # the 61-token answer leaves no room for a prompt
    assert by_id["b1"].prompt_len == 3 and by_id["b1"].prompt == "alpha beta"  # short context
    lens = [by_id[f"a{i}"].prompt_len for i in range(30)]
    assert all(10 <= n <= 20 for n in lens) and len(set(lens)) > 3
    assert all(by_id[f"a{i}"].output_len == 4 for i in range(30))
    assert counter.count(by_id["a0"].prompt) == by_id["a0"].prompt_len


def test_longbench_main(tmp_path: Path, tokenizer_dir: Path) -> None:
    folder = _longbench_folder(tmp_path / "lb")
    out = tmp_path / "lb.jsonl"
    argv = [
        "--input",
        str(folder),
        "--tokenizer",
        str(tokenizer_dir),
        "--output",
        str(out),
        "--min-prompt-len",
        "10",
        "--max-prompt-len",
        "20",
        "--max-context",
        "64",
        "--num-samples",
        "5",
    ]
    assert longbench_main(argv) == 0
    reqs = read_dataset(out)
    assert len(reqs) == 5
    meta = read_meta(out)
    assert meta["files"] == ["qa.jsonl", "sum.jsonl"] and meta["num_requests"] == 5
