"""Model zoo (architecture dimensions) and GPU hardware specs used by the roofline cost model,
the KV-transfer model and the planner. Figures are public datasheet values (dense fp16/bf16).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Dimensions of a decoder-only transformer, enough for FLOPs, weight and KV-cache sizes."""

    name: str  # HF id, e.g. "facebook/opt-13b"
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    ffn_size: int
    vocab_size: int
    max_seq_len: int
    gated_ffn: bool = False  # Llama SwiGLU has 3 FFN matrices, OPT has 2
    dtype_bytes: int = 2

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.name}: heads must divide hidden size, kv heads the heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_params(self) -> int:
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attn = h * h * 2 + h * kv * 2  # q, o + k, v projections
        ffn = h * self.ffn_size * (3 if self.gated_ffn else 2)
        return self.num_layers * (attn + ffn) + self.vocab_size * h

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True)
class HardwareSpec:
    """One GPU kind. Bandwidths are per GPU, one direction, in GB/s (1e9 bytes)."""

    name: str
    peak_tflops: float  # dense fp16/bf16 tensor-core peak
    hbm_gb_s: float
    memory_gb: float
    nvlink_gb_s: float  # GPU<->GPU inside a node
    network_gb_s: float  # GPU's share of the inter-node network

    def __post_init__(self) -> None:
        for name in ("peak_tflops", "hbm_gb_s", "memory_gb", "nvlink_gb_s", "network_gb_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"hardware {self.name}: {name} must be positive")


def _opt(size: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    return ModelSpec(f"facebook/opt-{size}", layers, hidden, heads, heads, 4 * hidden, 50272, 2048)


def _llama(name: str, layers: int, hidden: int, heads: int, kv: int, ffn: int, vocab: int,
           max_len: int) -> ModelSpec:
    return ModelSpec(name, layers, hidden, heads, kv, ffn, vocab, max_len, gated_ffn=True)


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        _opt("13b", 40, 5120, 40),
        _opt("66b", 64, 9216, 72),
        _opt("175b", 96, 12288, 96),
        _llama("meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 11008, 32000, 4096),
        _llama("meta-llama/Llama-2-13b-hf", 40, 5120, 40, 40, 13824, 32000, 4096),
        _llama("meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 28672, 32000, 4096),
        _llama("meta-llama/Meta-Llama-3-8B", 32, 4096, 32, 8, 14336, 128256, 8192),
        _llama("meta-llama/Meta-Llama-3-70B", 80, 8192, 64, 8, 28672, 128256, 8192),
    )
}

# Short aliases accepted on the command line: "opt-13b", "llama-2-7b", "llama-3-8b", ...
_ALIASES = {
    "opt-13b": "facebook/opt-13b",
    "opt-66b": "facebook/opt-66b",
    "opt-175b": "facebook/opt-175b",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-13b": "meta-llama/Llama-2-13b-hf",
    "llama-2-70b": "meta-llama/Llama-2-70b-hf",
    "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama-3-70b": "meta-llama/Meta-Llama-3-70B",
}

HARDWARE: dict[str, HardwareSpec] = {
    h.name: h
    for h in (
        HardwareSpec("a100-80g", 312.0, 2039.0, 80.0, 300.0, 25.0),
        HardwareSpec("h100-80g", 989.0, 3350.0, 80.0, 450.0, 50.0),
        HardwareSpec("h200-141g", 989.0, 4800.0, 141.0, 450.0, 50.0),
    )
}


def resolve_model_name(name: str) -> str:
    """Canonical HF id for a zoo name or alias (case-insensitive); unknown names pass through."""
    key = name.lower()
    if key in _ALIASES:
        return _ALIASES[key]
    for full in MODELS:
        if full.lower() == key or full.lower().split("/")[-1] == key:
            return full
    return name


def get_model(name: str) -> ModelSpec:
    full = resolve_model_name(name)
    if full not in MODELS:
        raise KeyError(f"unknown model {name!r}; the zoo has {sorted(_ALIASES)}")
    return MODELS[full]


def get_hardware(name: str) -> HardwareSpec:
    if name.lower() not in HARDWARE:
        raise KeyError(f"unknown hardware {name!r}; known: {sorted(HARDWARE)}")
    return HARDWARE[name.lower()]
