"""The engine on a CUDA GPU (`gpu` marker, skipped without one): greedy outputs of tiny models vs
transformers on the same GPU, colocated (float32: exact; bf16 through the CUDA kernels: exact up
to near-ties), decode CUDA graphs vs eager, and 1P+1D sharing one GPU on Ray."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from distllm import LLM, SamplingParams

pytestmark = pytest.mark.gpu

PROMPT_LENS = [5, 17, 40, 9, 28, 12]
MAX_TOKENS = [8, 24, 12, 20, 8, 16]
ENGINE = dict(device="cuda", block_size=16, max_num_seqs=4, max_model_len=256,
              max_num_batched_tokens=1024, gpu_memory_utilization=0.3)
# NOTE: head_dim 64 so bf16 runs the CUDA prefill/decode kernels (tiny presets have head_dim 16)
KERNEL_SHAPE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                    num_hidden_layers=2)
BF16_TIE_TOL = 0.125  # logits: a divergence is allowed only where transformers' top-2 are closer


def _prompts(n: int = len(PROMPT_LENS)) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(10, 512) for _ in range(k)] for k in PROMPT_LENS[:n]]


def _params(max_tokens: list[int]) -> list[SamplingParams]:
    return [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in max_tokens]


def _hf_greedy(model_dir: Path, dtype: torch.dtype, prompts: list[list[int]]
               ) -> list[tuple[list[int], torch.Tensor]]:
    """(tokens, [steps, vocab] logits) of transformers' greedy generate on the GPU."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                 attn_implementation="eager").cuda().eval()
    model.generation_config.eos_token_id = None
    out = []
    for prompt, n in zip(prompts, MAX_TOKENS, strict=False):
        ids = torch.tensor([prompt], device="cuda")
        with torch.no_grad():
            res = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=n, pad_token_id=0, output_logits=True,
                                 return_dict_in_generate=True)
        out.append((res.sequences[0, len(prompt):].tolist(), torch.cat(res.logits).float()))
    return out


def _free_gpu() -> None:
    """NOTE: the KV cache takes a share of the GPU minus what this process holds, so engines and
    transformers models of earlier tests must be gone first."""
    import gc

    gc.collect()
    torch.cuda.empty_cache()


def _generate(model_dir: Path, prompts: list[list[int]], **kwargs: object) -> list[list[int]]:
    _free_gpu()
    llm = LLM(str(model_dir), **{**ENGINE, **kwargs})
    try:
        outputs = llm.generate(prompts, _params(MAX_TOKENS[:len(prompts)]), use_tqdm=False)
        return [o.token_ids for o in outputs]
    finally:
        llm.shutdown()


def _assert_equal_up_to_near_ties(ours: list[int], want: list[int], logits: torch.Tensor
                                  ) -> None:
    """Equal until the first divergence, which must be a near-tie in transformers' logits."""
    for step, (a, b) in enumerate(zip(ours, want, strict=True)):
        if a != b:
            gap = float(logits[step, b] - logits[step, a])
            assert gap <= BF16_TIE_TOL, f"step {step}: {a} vs {b}, logit gap {gap:.3f}"
            return


@pytest.mark.parametrize("preset", ["llama", "llama3", "opt", "gpt2"])
def test_float32_matches_transformers_exactly(preset: str, tiny_model_dir) -> None:  # noqa: ANN001
    model_dir = tiny_model_dir(preset)
    prompts = _prompts()
    want = [tokens for tokens, _ in _hf_greedy(model_dir, torch.float32, prompts)]
    assert _generate(model_dir, prompts, dtype="float32") == want


@pytest.mark.parametrize("arch", ["llama3", "opt"])
def test_bf16_cuda_kernels_match_transformers(arch: str, tmp_path: Path) -> None:
    from distllm import ops
    from distllm.testing import make_tiny_model

    assert ops.HAS_CUDA_NATIVE, "distllm._C was built without the CUDA kernels"
    model_dir = make_tiny_model(tmp_path / arch, arch=arch, seed=0, **KERNEL_SHAPE)
    prompts = _prompts()
    reference = _hf_greedy(model_dir, torch.bfloat16, prompts)
    ours = _generate(model_dir, prompts, dtype="bfloat16")
    for got, (want, logits) in zip(ours, reference, strict=True):
        _assert_equal_up_to_near_ties(got, want, logits)


def test_cuda_graphs_match_eager(tmp_path: Path) -> None:
    from distllm.testing import make_tiny_model

    model_dir = make_tiny_model(tmp_path / "m", arch="llama3", seed=0, **KERNEL_SHAPE)
    _free_gpu()
    llm = LLM(str(model_dir), dtype="bfloat16", **ENGINE)
    worker = llm.engine.worker
    assert worker.uses_cuda_graphs and worker.runner.model.sizes == [1, 2, 4]
    prompts = _prompts()  # 6 requests, 4 at a time, ragged lengths: batches 4, 3, 2, 1 (padded)
    graphed = [o.token_ids for o in llm.generate(prompts, _params(MAX_TOKENS), use_tqdm=False)]
    del llm, worker
    eager = _generate(model_dir, prompts, dtype="bfloat16", enforce_eager=True)
    assert graphed == eager


def test_kv_cache_sized_from_gpu_memory(tiny_model_dir) -> None:  # noqa: ANN001
    from distllm.config import EngineConfig
    from distllm.worker.worker import Worker

    config = EngineConfig.from_kwargs(str(tiny_model_dir("llama")), **ENGINE, swap_space_gb=0.01)
    _free_gpu()
    worker = Worker(config)
    free, total = torch.cuda.mem_get_info()
    num_blocks, num_swap = worker.determine_num_blocks()
    worker.init_cache(num_blocks, num_swap)
    block = worker.cache_engine.device_caches[0][0][0]
    nbytes = 2 * len(worker.cache_engine.device_caches) * block.numel() * block.element_size()
    assert 0 < num_blocks * nbytes <= min(0.3 * total, free) and num_swap > 0
    assert worker.cache_engine.swap_caches[0][0].is_pinned()


def test_transport_selection_on_this_gpu() -> None:
    from distllm.distributed.transport_select import choose_transport, is_same_gpu, local_location

    a, b = local_location("node", "cuda"), local_location("node", "cuda")
    assert choose_transport(a, b) == "cuda_ipc" and is_same_gpu(a, b)


@pytest.mark.slow
def test_disaggregated_on_one_gpu_matches_transformers(tiny_model_dir) -> None:  # noqa: ANN001
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        model_dir = tiny_model_dir("llama3")
        prompts = _prompts()
        want = [tokens for tokens, _ in _hf_greedy(model_dir, torch.float32, prompts)]
        _free_gpu()
        llm = LLM(str(model_dir), **{**ENGINE, "dtype": "float32", "mode": "disaggregated",
                                     "gpu_memory_utilization": 0.3})
        try:
            workers = [i.ray.workers[0] for i in (*llm.engine.prefill, *llm.engine.decode)]
            peers = ray.get([w.__ray_call__.remote(lambda self: sorted(self.transport.local_peers))
                             for w in workers])
            assert peers == [[1], [0]], "1P+1D on one GPU must move KV over CUDA IPC"
            outputs = llm.generate(prompts, _params(MAX_TOKENS), use_tqdm=False)
            assert [o.token_ids for o in outputs] == want
        finally:
            llm.shutdown()
    finally:
        if started:
            ray.shutdown()
