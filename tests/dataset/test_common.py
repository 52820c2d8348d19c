"""JSONL/meta round trip, length statistics and DistServe `.ds` compatibility."""

from __future__ import annotations

import marshal
from pathlib import Path

import pytest

from dataset.common import DatasetRequest, length_stats, read_dataset, read_meta, write_dataset
from dataset.distserve_format import check_local_file, read_ds_named, write_ds


def _reqs() -> list[DatasetRequest]:
    return [
        DatasetRequest(
            f"p{i}", i, 10 * i, arrival_s=0.5 * i if i % 2 else None, id=None if i == 2 else f"r{i}"
        )
        for i in range(1, 5)
    ]


def test_jsonl_round_trip_and_meta(tmp_path: Path) -> None:
    out = write_dataset(tmp_path / "d.jsonl", _reqs(), {"source": "unit", "seed": 3})
    assert read_dataset(out) == _reqs()
    meta = read_meta(out)
    assert meta["source"] == "unit" and meta["num_requests"] == 4 and meta["seed"] == 3
    assert meta["stats"]["prompt_len"]["mean"] == 2.5
    assert meta["stats"]["prompt_len"]["p50"] == 2.5
    assert meta["stats"]["output_len"]["max"] == 40


def test_length_stats_known_values() -> None:
    stats = length_stats([DatasetRequest("x", n, 7) for n in (2, 4, 4, 4, 5, 5, 7, 9)])
    assert stats["prompt_len"]["mean"] == 5.0 and stats["prompt_len"]["std"] == 2.0
    assert stats["output_len"]["std"] == 0.0
    assert stats["prompt_len"]["p90"] == pytest.approx(7.6)


def test_bad_records_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "prompt_len": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_dataset(bad)
    with pytest.raises(ValueError):
        DatasetRequest("x", -1, 3)


def test_ds_round_trip(tmp_path: Path) -> None:
    path = write_ds(tmp_path / "sharegpt.ds", "sharegpt", _reqs())
    name, reqs = read_ds_named(path)
    assert name == "sharegpt"
    assert [(r.prompt, r.prompt_len, r.output_len) for r in reqs] == [
        (f"p{i}", i, 10 * i) for i in range(1, 5)
    ]
    assert [(r.prompt_len, r.output_len) for r in read_dataset(path)] == [
        (r.prompt_len, r.output_len) for r in reqs
    ]


def test_ds_matches_distserve_layout(tmp_path: Path) -> None:
    path = tmp_path / "x.ds"
    path.write_bytes(marshal.dumps({"dataset_name": "humaneval", "reqs": [("a b", 3, 5)]}))
    assert [(r.prompt, r.prompt_len, r.output_len) for r in read_dataset(path)] == [("a b", 3, 5)]


def test_ds_refuses_network_and_malformed(tmp_path: Path) -> None:
    for url in ("http://example.com/a.ds", "//server/share/a.ds", "\\\\server\\a.ds"):
        with pytest.raises(ValueError, match="network"):
            read_dataset(url)
    local = tmp_path / "a.ds"
    local.write_bytes(marshal.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="not a DistServe dataset"):
        read_dataset(local)
    local.write_bytes(marshal.dumps({"dataset_name": "x", "reqs": [("p", "3", 4)]}))
    with pytest.raises(ValueError, match=r"reqs\[0\]"):
        read_dataset(local)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nsrv:/exp {tmp_path} nfs4 rw 0 0\n")
    with pytest.raises(ValueError, match="nfs4"):
        check_local_file(local, mounts_file=str(mounts))
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n")
    assert check_local_file(local, mounts_file=str(mounts)) == local.resolve()


def test_tokenizer_from_dir_or_file(tokenizer_dir: Path) -> None:
    from dataset.common import load_tokenizer

    by_dir, by_file = (
        load_tokenizer(tokenizer_dir),
        load_tokenizer(tokenizer_dir / "tokenizer.json"),
    )
    text = "the of zzz alpha"
    assert by_dir.encode(text) == by_file.encode(text) == [1, 2, 3, 0, 22]
    assert by_dir.decode(by_dir.encode("alpha beta")) == "alpha beta"
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tokenizer_dir / "missing")
