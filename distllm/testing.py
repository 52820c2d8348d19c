"""Tiny seeded random models in HF format (config, safetensors, byte-level BPE tokenizer) for
tests, the demo and benchmarks; loadable by both transformers and distllm.

    path = make_tiny_model(tmp_path / "m", arch="llama3", seed=0, num_hidden_layers=4)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from distllm.models.loader import random_weight

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A stitch in time saves nine.
Once upon a time there was a little town by the river, and every morning the baker opened his
shop before the sun came up. People walked in to buy fresh bread, warm rolls and sweet cakes.
The children ran to school, the farmers drove their carts to the market, and the old clock in
the square struck eight. It was a quiet place where nothing much ever happened, until one day a
stranger arrived with a large wooden box on his back.
Science is the systematic study of the structure and behaviour of the physical and natural world
through observation and experiment. Computers process information using programs written by
people; a program is a list of instructions that tells the machine what to do, step by step.
Large language models predict the next word in a sentence. They are trained on a lot of text and
can answer questions, write stories, translate between languages and summarize long documents.
Serving them efficiently needs careful scheduling of requests, batching, memory management for
the attention cache, and parallel execution across many devices in a cluster.
What is the capital of France? Paris is the capital of France. How many days are in a week?
There are seven days in a week: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday.
The numbers one, two, three, four, five, six, seven, eight, nine and ten are written 1 2 3 4 5 6
7 8 9 10. Please tell me a story about a dragon who wanted to learn how to read books.
She said: "I will be there at noon, don't be late!" He replied, "Of course, see you soon."
Water boils at one hundred degrees and freezes at zero degrees on the Celsius scale.
The weather today is sunny with a light breeze from the west; tomorrow it might rain.
Good morning! How are you doing today? I am fine, thank you, and how about you?
"""

# preset -> (model_type, architecture, config fields, bos/eos scheme)
_PRESETS: dict[str, dict] = {
    "llama": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64,
                  intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-6,
                  rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu"),
    "llama3": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64,
                   intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5,
                   rope_theta=500000.0, tie_word_embeddings=False, hidden_act="silu",
                   rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0,
                                     original_max_position_embeddings=64)),
    "opt": dict(model_type="opt", architectures=["OPTForCausalLM"], hidden_size=64,
                ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=1024, do_layer_norm_before=True,
                word_embed_proj_dim=64, activation_function="relu", enable_bias=True,
                tie_word_embeddings=True),
    "opt-350m": dict(model_type="opt", architectures=["OPTForCausalLM"], hidden_size=64,
                     ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=1024, do_layer_norm_before=False,
                     word_embed_proj_dim=32, activation_function="relu", enable_bias=True,
                     tie_word_embeddings=True),
    "gpt2": dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_embd=64, n_layer=2,
                 n_head=4, n_positions=1024, activation_function="gelu_new",
                 layer_norm_epsilon=1e-5, tie_word_embeddings=True),
}
# family -> (special tokens in id order, bos, eos, pad, add_bos)
_SPECIALS = {
    "llama": (["<unk>", "<s>", "</s>"], "<s>", "</s>", None, True),
    "opt": (["<s>", "<pad>", "</s>", "<unk>"], "</s>", "</s>", "<pad>", True),
    "gpt2": (["<|endoftext|>"], "<|endoftext|>", "<|endoftext|>", None, False),
}
_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant:{% endif %}")

PRESETS = tuple(_PRESETS)


def make_tiny_model(out_dir: str | Path, arch: str = "llama", seed: int = 0,
                    vocab_size: int = 512, **config_overrides: object) -> Path:
    """Write a seeded random HF model dir for preset `arch` (see PRESETS) and return its path.

    `config_overrides` replace HF config fields (e.g. hidden_size=512, num_hidden_layers=4)."""
    if arch not in _PRESETS:
        raise ValueError(f"unknown tiny-model preset {arch!r}; choose from {PRESETS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    family = _PRESETS[arch]["model_type"]
    tok_info = _write_tokenizer(out, family, vocab_size)
    fields = {**_PRESETS[arch], "vocab_size": vocab_size, **tok_info, **config_overrides}
    if family == "opt" and "word_embed_proj_dim" not in config_overrides and arch == "opt":
        fields["word_embed_proj_dim"] = fields["hidden_size"]
    hf_config = _write_config(out, fields)
    _write_weights(out, hf_config, family, seed)
    return out


def _write_tokenizer(out: Path, family: str, vocab_size: int) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials, bos, eos, pad, add_bos = _SPECIALS[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    bos_id, eos_id = tok.token_to_id(bos), tok.token_to_id(eos)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, bos_id)])
    tok.save(str(out / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
           "add_bos_token": add_bos, "add_eos_token": False, "chat_template": _CHAT_TEMPLATE,
           "model_max_length": 4096, "clean_up_tokenization_spaces": False}
    if pad is not None:
        cfg["pad_token"] = pad
    if family == "llama":
        cfg["unk_token"] = "<unk>"
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    gen = {"bos_token_id": bos_id, "eos_token_id": eos_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    info = {"bos_token_id": bos_id, "eos_token_id": eos_id}
    if pad is not None:
        info["pad_token_id"] = tok.token_to_id(pad)
    return info


def _write_config(out: Path, fields: dict) -> dict:
    from transformers import AutoConfig

    fields = dict(fields)
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, **fields)
    config.save_pretrained(str(out))
    return json.loads((out / "config.json").read_text())


def _is_conv1d(family: str, name: str) -> bool:
    return family == "gpt2" and name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))


def _write_weights(out: Path, hf_config: dict, family: str, seed: int) -> None:
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(out))
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    num_layers = hf_config.get("num_hidden_layers") or hf_config["n_layer"]
    tied = bool(hf_config.get("tie_word_embeddings", True))
    tensors = {}
    for name, param in meta.named_parameters():  # tied parameters appear once
        if _is_conv1d(family, name):  # Conv1D stores [in, out]
            t = random_weight(name, tuple(param.shape)[::-1], num_layers, tied, gen).t()
        else:
            t = random_weight(name, tuple(param.shape), num_layers, tied, gen)
        tensors[name] = t.contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
