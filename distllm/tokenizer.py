"""Tokenizer over `tokenizer.json` (the `tokenizers` library) with HF-compatible special-token
handling, plus an incremental detokenizer for streaming."""
from __future__ import annotations

import json
from pathlib import Path


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _token_content(value: object) -> str | None:
    if isinstance(value, dict):  # AddedToken serialisation
        return value.get("content")
    return value if isinstance(value, str) else None


def _default_chat_template(value: object) -> str | None:
    if isinstance(value, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        return named.get("default") or next(iter(named.values()), None)
    return value if isinstance(value, str) else None


class Tokenizer:
    """encode/decode matching transformers' AutoTokenizer on the same model directory."""

    def __init__(self, backend: object, tokenizer_config: dict, generation_config: dict,
                 model_config: dict) -> None:
        self.backend = backend  # tokenizers.Tokenizer
        self.bos_token = _token_content(tokenizer_config.get("bos_token"))
        self.eos_token = _token_content(tokenizer_config.get("eos_token"))
        self.pad_token = _token_content(tokenizer_config.get("pad_token"))
        self.bos_token_id = self._id_of(self.bos_token, generation_config, model_config, "bos")
        self.eos_token_id = self._id_of(self.eos_token, generation_config, model_config, "eos")
        self.pad_token_id = self._id_of(self.pad_token, {}, model_config, "pad")
        self.chat_template = _default_chat_template(tokenizer_config.get("chat_template"))
        self._maybe_rebuild_post_processor(tokenizer_config)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        from tokenizers import Tokenizer as Backend

        path = Path(path)
        if not (path / "tokenizer.json").exists():
            raise FileNotFoundError(f"{path}/tokenizer.json not found (only fast tokenizers "
                                    "stored as tokenizer.json are supported)")
        backend = Backend.from_file(str(path / "tokenizer.json"))
        special_map = _read_json(path / "special_tokens_map.json")
        tok_cfg = {**special_map, **_read_json(path / "tokenizer_config.json")}
        if (path / "chat_template.jinja").exists():  # takes priority, as in transformers
            tok_cfg["chat_template"] = (path / "chat_template.jinja").read_text()
        return cls(backend, tok_cfg, _read_json(path / "generation_config.json"),
                   _read_json(path / "config.json"))

    def _id_of(self, token: str | None, gen_cfg: dict, model_cfg: dict, kind: str) -> int | None:
        if token is not None and self.backend.token_to_id(token) is not None:
            return self.backend.token_to_id(token)
        value = gen_cfg.get(f"{kind}_token_id", model_cfg.get(f"{kind}_token_id"))
        if isinstance(value, list):  # several eos ids: the first is the canonical one
            value = value[0] if value else None
        return value

    def _maybe_rebuild_post_processor(self, cfg: dict) -> None:
        """Like transformers>=5: the tokenizer.json post-processor decides which special tokens
        `encode` adds (tokenizer_config's add_bos_token/add_eos_token are ignored then); without
        one, Llama tokenizers add BOS and others add nothing."""
        if self.backend.post_processor is not None:
            return
        if "Llama" not in str(cfg.get("tokenizer_class", "")) or self.bos_token_id is None:
            return
        from tokenizers import processors

        bos = self.bos_token
        self.backend.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, self.bos_token_id)])

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render `messages` with the model's Jinja chat template (needs jinja2)."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat_template")
        import jinja2

        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "")


class IncrementalDetokenizer:
    """Turns a token stream into text deltas. A delta is emitted only once the decoded text no
    longer ends in an incomplete UTF-8 sequence; `finish()` flushes the rest, so the
    concatenated deltas equal `tokenizer.decode(all_ids)`.

        detok = IncrementalDetokenizer(tok, prompt_ids)
        for t in new_ids: out += detok.step(t)
        out += detok.finish()
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int] | None = None,
                 skip_special_tokens: bool = True, context_tokens: int = 5) -> None:
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.ids: list[int] = list(prompt_ids or [])
        # decode windows start `context_tokens` back so leading-space rules see context
        self.prefix_offset = max(len(self.ids) - context_tokens, 0)
        self.read_offset = len(self.ids)
        self.num_prompt_ids = len(self.ids)
        self.text = ""  # all output text emitted so far

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def step(self, token_id: int) -> str:
        """Append one token; return the new text it completes (may be "")."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        delta = new_text[len(prefix_text):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta

    def finish(self) -> str:
        """Flush text held back at the end of the stream (e.g. a truncated UTF-8 sequence)."""
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        delta = new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += delta
        return delta
