"""Tokenizer vs transformers' AutoTokenizer, special tokens, chat template, and the
incremental detokenizer (deltas concatenate to the full decode, incl. multi-byte text)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from distllm.testing import make_tiny_model
from distllm.tokenizer import IncrementalDetokenizer, Tokenizer

TEXTS = ["Hello world, how are you?", " leading space and  double  spaces", "",
         "héllo 世界 🙂 emoji\nnew line\ttab", "The quick brown fox jumps over the lazy dog."]
# preset -> (bos id expected at the start or None, eos id)
PRESETS = {"llama": (1, 2), "opt": (2, 2), "gpt2": (None, 0)}


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tok")
    return {p: make_tiny_model(root / p, arch=p) for p in PRESETS}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_encode_decode_match_auto_tokenizer(tok_dirs: dict, preset: str) -> None:
    from transformers import AutoTokenizer

    ours, theirs = Tokenizer.from_pretrained(tok_dirs[preset]), \
        AutoTokenizer.from_pretrained(tok_dirs[preset])
    bos, eos = PRESETS[preset]
    assert (ours.bos_token_id if bos is not None else None, ours.eos_token_id) == (bos, eos)
    for text in TEXTS:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == theirs.encode(text, add_special_tokens=special)
            if special and bos is not None:
                assert ids[0] == bos
        ids = ours.encode(text)
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True) == text
    assert ours.vocab_size == len(theirs)


@pytest.mark.parametrize("add_bos", [False, True])
def test_post_processor_decides_special_tokens(tok_dirs: dict, tmp_path: Path,
                                               add_bos: bool) -> None:
    from transformers import AutoTokenizer

    path = shutil.copytree(tok_dirs["llama"], tmp_path / "flags")
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg["add_bos_token"] = add_bos  # ignored: tokenizer.json has a post-processor
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    ids = Tokenizer.from_pretrained(path).encode("hello there")
    assert ids == AutoTokenizer.from_pretrained(path).encode("hello there")
    assert ids[0] == 1
    tok_json = json.loads((path / "tokenizer.json").read_text())
    tok_json["post_processor"] = None
    (path / "tokenizer.json").write_text(json.dumps(tok_json))
    ids = Tokenizer.from_pretrained(path).encode("hello there")
    assert ids == AutoTokenizer.from_pretrained(path).encode("hello there")
    assert ids[0] != 1


@pytest.mark.parametrize("preset", list(PRESETS))
def test_incremental_detokenizer_equals_full_decode(tok_dirs: dict, preset: str) -> None:
    tok = Tokenizer.from_pretrained(tok_dirs[preset])
    rng = random.Random(0)
    prompt = tok.encode("Once upon a time")
    outputs = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
    outputs += [[rng.randrange(tok.vocab_size) for _ in range(40)] for _ in range(5)]
    for out_ids in outputs:
        detok = IncrementalDetokenizer(tok, prompt)
        deltas = [detok.step(t) for t in out_ids]
        text = "".join(deltas) + detok.finish()
        assert text == tok.decode(out_ids) == detok.text
    # a multi-byte character split over several byte tokens is emitted only when complete
    emoji = tok.encode("🙂", add_special_tokens=False)
    assert len(emoji) > 1
    detok = IncrementalDetokenizer(tok, prompt)
    assert [detok.step(t) for t in emoji] == [""] * (len(emoji) - 1) + ["🙂"]


def test_chat_template_renders(tok_dirs: dict) -> None:
    tok = Tokenizer.from_pretrained(tok_dirs["llama"])
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "user: hi\nassistant:"
