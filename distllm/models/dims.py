"""Architecture-independent model dimensions read from an HF config dict (pure Python, no torch).

Used by the engine config, the KV cache sizing and the simulator's cost and memory models.
"""
from __future__ import annotations

from dataclasses import dataclass

# architecture family -> HF config field names for (num_layers, num_heads, hidden, max_positions)
_FIELDS: dict[str, tuple[str, str, str, str]] = {
    "llama": ("num_hidden_layers", "num_attention_heads", "hidden_size", "max_position_embeddings"),
    "opt": ("num_hidden_layers", "num_attention_heads", "hidden_size", "max_position_embeddings"),
    "gpt2": ("n_layer", "n_head", "n_embd", "n_positions"),
}
# HF `architectures` entry -> family
ARCH_FAMILY: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "OPTForCausalLM": "opt",
    "GPT2LMHeadModel": "gpt2",
}


@dataclass(frozen=True)
class ModelDims:
    architecture: str  # HF architectures[0], e.g. "LlamaForCausalLM"
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size",
                     "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelDims.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_heads {self.num_heads} not a multiple of "
                             f"num_kv_heads {self.num_kv_heads}")

    @property
    def family(self) -> str:
        return ARCH_FAMILY[self.architecture]

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V one token occupies over all layers (whole model, before TP split)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def num_params(self) -> int:
        """Approximate parameter count (weights only, biases and norms ignored)."""
        h, q = self.hidden_size, self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        mlp_mats = 3 if self.family == "llama" else 2
        per_layer = h * (q + 2 * kv) + q * h + mlp_mats * h * self.intermediate_size
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embed


def get_architecture(hf_config: dict) -> str:
    archs = hf_config.get("architectures") or []
    for arch in archs:
        if arch in ARCH_FAMILY:
            return arch
    model_type = {"llama": "LlamaForCausalLM", "opt": "OPTForCausalLM",
                  "gpt2": "GPT2LMHeadModel"}
    if hf_config.get("model_type") in model_type:
        return model_type[hf_config["model_type"]]
    raise ValueError(f"unsupported architectures {archs} (model_type "
                     f"{hf_config.get('model_type')!r}); supported: {sorted(ARCH_FAMILY)}")


def model_dims(hf_config: dict) -> ModelDims:
    """Read the dimensions of a supported HF config dict (`config.json` contents)."""
    arch = get_architecture(hf_config)
    family = ARCH_FAMILY[arch]
    f_layers, f_heads, f_hidden, f_pos = _FIELDS[family]
    hidden, heads = int(hf_config[f_hidden]), int(hf_config[f_heads])
    if family == "llama":
        kv_heads = int(hf_config.get("num_key_value_heads") or heads)
        head_dim = int(hf_config.get("head_dim") or hidden // heads)
        inter = int(hf_config["intermediate_size"])
        tie = bool(hf_config.get("tie_word_embeddings", False))
    elif family == "opt":
        kv_heads, head_dim = heads, hidden // heads
        inter, tie = int(hf_config["ffn_dim"]), bool(hf_config.get("tie_word_embeddings", True))
    else:
        kv_heads, head_dim = heads, hidden // heads
        inter, tie = int(hf_config.get("n_inner") or 4 * hidden), True
    return ModelDims(architecture=arch, num_layers=int(hf_config[f_layers]), num_heads=heads,
                     num_kv_heads=kv_heads, head_dim=head_dim, hidden_size=hidden,
                     intermediate_size=inter, vocab_size=int(hf_config["vocab_size"]),
                     max_position_embeddings=int(hf_config.get(f_pos, 2048)),
                     tie_word_embeddings=tie)
