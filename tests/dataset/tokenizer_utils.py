"""A tiny word-level HF tokenizer made with the `tokenizers` library (one token per word + BOS)."""

from __future__ import annotations

from pathlib import Path

VOCAB_WORDS = (
    "the of and to in is was for on that with as it at by from this be are or "
    "alpha beta gamma delta def return x y if else print"
).split()


def make_word_tokenizer(out_dir: Path) -> Path:
    """Write `out_dir/tokenizer.json`; every whitespace-separated word is one token, unknown
    words map to [UNK], and encode() prepends <s> (like a Llama BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {"[UNK]": 0, "<s>": 1}
    for w in VOCAB_WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(["<s>"])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    return out_dir
