"""Step contention (distllm.profiler.contention): config validation and fitting, the host
section `distllm profile` writes (cores + coefficients, loadable by simdist), and a real
measurement between two tiny-model workers (structure and signs only, never timings)."""
from __future__ import annotations

from pathlib import Path

import pytest

from distllm.profiler.contention import (
    ContentionConfig,
    fair_share,
    host_section,
    measure_contention,
)
from simdist.host import HostSpec


def test_config_validates_and_fits_the_cache() -> None:
    with pytest.raises(ValueError, match="repeats"):
        ContentionConfig(repeats=0)
    cfg = ContentionConfig(decode_batch=16, context_len=256)
    assert cfg.num_blocks_needed(16) == 16 * 16
    assert cfg.fitted(64, 16).decode_batch == 4 and cfg.fitted(10, 16).decode_batch == 1
    assert cfg.fitted(1000, 16) == cfg


def test_host_section_has_cores_and_only_the_coefficients() -> None:
    bare = host_section(cores=4)
    assert bare["cores"] == 4 and "contention_decode" not in bare
    assert HostSpec.from_dict(bare) == HostSpec(cores=4)
    sec = host_section({"contention_prefill": 0.2, "contention_decode": 0.4,
                        "measured": {"cores": 2}}, cores=2)
    spec = HostSpec.from_dict(sec)
    assert spec.contention_prefill == 0.2 and spec.contention_decode == 0.4
    assert sec["measured"]["contention"] == {"cores": 2} and "frontend" in sec["measured"]["how"]


def test_two_tiny_workers_give_non_negative_coefficients(tiny_model: Path) -> None:
    from distllm.config import EngineConfig

    config = EngineConfig.from_kwargs(str(tiny_model), block_size=8, num_kv_blocks=128,
                                      max_num_batched_tokens=512)
    cfg = ContentionConfig(prompt_len=32, decode_batch=8, context_len=64, repeats=3,
                           blocks=1, warmup=1)
    out = measure_contention(config, cfg, cores=2)
    assert out["contention_prefill"] >= 0 and out["contention_decode"] >= 0
    m = out["measured"]
    for key in ("prefill_alone_ms", "prefill_contended_ms", "decode_alone_ms",
                "decode_contended_ms"):
        assert m[key] > 0
    assert m["other_cores"] >= 0 and m["decode_batch"] == 8
    assert m["fair_share"] == fair_share(1, m["other_cores"], 2)
    expected = m["decode_contended_ms"] / (m["decode_alone_ms"] * m["fair_share"]) - 1
    assert out["contention_decode"] == pytest.approx(max(0.0, expected))
    spec = HostSpec.from_dict(host_section(out, cores=2))
    assert spec.contention_decode == out["contention_decode"]


def test_fair_share_takes_out_the_cores_and_the_other_load() -> None:
    assert fair_share(1, 0.0, 2) == 1.0  # two workers, two cores: nothing to share
    assert fair_share(1, 1.0, 2) == pytest.approx(1.5)  # 3 busy on 2 cores vs 2 on 2
    assert fair_share(1, 0.0, 1) == 2.0 and fair_share(2, 0.0, 4) == 1.0
