"""CPU smoke test of evaluation/bench_gpu_engine.py: arguments, the no-CUDA exit, the model dirs
it writes (real dims, no weights) and the table; no numbers are measured here."""
from __future__ import annotations

import pytest

from evaluation import bench_gpu_engine as bench


def test_defaults_match_the_issue() -> None:
    args = bench.parse_args([])
    assert args.models == ["opt-1.3b", "llama3-8b"] and args.num_requests == 500
    assert args.dtype == "bfloat16" and len(args.rates) >= 3
    assert bench.parse_args(["--rates", "0.5,3", "--models", "opt-1.3b"]).rates == [0.5, 3.0]


@pytest.mark.parametrize("argv", [["--models", "gpt-9"], ["--max-len", "4096"]])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2


def test_without_cuda_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str],
                                             tmp_path) -> None:
    monkeypatch.setattr(bench, "has_cuda", lambda: False)
    out = tmp_path / "r.json"
    assert bench.main(["-o", str(out)]) == bench.NO_CUDA_EXIT
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "no CUDA" in captured.err and not out.exists()


@pytest.mark.parametrize("preset,layers,kv_heads", [("opt-1.3b", 24, 32), ("llama3-8b", 32, 8)])
def test_model_dirs_have_real_dims_and_no_weights(tmp_path, preset: str, layers: int,
                                                  kv_heads: int) -> None:
    from distllm.config import EngineConfig

    model_dir = bench.make_model_dir(tmp_path / preset, preset)
    assert not list(model_dir.glob("*.safetensors"))
    config = EngineConfig.from_kwargs(str(model_dir), load_format="dummy", dtype="bfloat16",
                                      device="cuda", max_model_len=2048,
                                      max_num_batched_tokens=8192)
    dims = config.model.dims
    assert (dims.num_layers, dims.num_kv_heads) == (layers, kv_heads)
    assert dims.head_dim in (64, 128) and config.cache.is_sized_by_gpu_memory


def test_report_table() -> None:
    report = {"meta": {"gpu": "H100"}, "offline": [
        {"model": "opt-1.3b", "num_requests": 500, "output_tokens": 90000, "distllm_tok_s": 9e3,
         "hf_tok_s": 2e3, "speedup": 4.5, "meets_goal": True},
        {"model": "llama3-8b", "num_requests": 500, "output_tokens": 90000,
         "distllm_tok_s": 4e3}],
        "serving": [{"mode": "1P+1D", "rate": 2.0, "mean_ttft_ms": 50.0, "p90_ttft_ms": None,
                     "mean_tpot_ms": 20.0, "p90_tpot_ms": 25.0, "output_throughput": 300.0}]}
    table = bench.format_report(report)
    assert "4.50" in table and "True" in table and "1P+1D" in table and " - " in table
