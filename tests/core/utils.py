"""Helpers for scheduler tests without a model: build a scheduler, requests, and fake outputs."""
from __future__ import annotations

from distllm.config import SchedulerConfig
from distllm.core.block_manager import BlockManager
from distllm.core.colocated_scheduler import ColocatedScheduler
from distllm.core.request_state import Request
from distllm.core.scheduler import Scheduler
from distllm.core.scheduler_output import ModelRunnerOutput, SchedulerOutput
from distllm.sampling_params import SamplingParams

EOS = 2


def create_scheduler(max_num_seqs: int = 16, max_num_batched_tokens: int = 512,
                     num_blocks: int = 64, block_size: int = 4, watermark: float = 0.0,
                     max_model_len: int = 512, num_swap_blocks: int = 0,
                     enable_chunked_prefill: bool = False,
                     preemption_mode: str = "recompute",
                     prefill_saturation_tokens: int | None = None) -> ColocatedScheduler:
    config = SchedulerConfig(max_num_seqs=max_num_seqs,
                             max_num_batched_tokens=max_num_batched_tokens,
                             enable_chunked_prefill=enable_chunked_prefill,
                             preemption_mode=preemption_mode,
                             prefill_saturation_tokens=prefill_saturation_tokens)
    block_manager = BlockManager(num_blocks, block_size, watermark, num_swap_blocks)
    return ColocatedScheduler(config, block_manager, max_model_len)


def create_requests(num_requests: int, prompt_len: int | list[int] = 8, max_tokens: int = 8,
                    ignore_eos: bool = True, prefix: str = "req") -> list[Request]:
    lens = [prompt_len] * num_requests if isinstance(prompt_len, int) else prompt_len
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=ignore_eos)
    return [Request(request_id=f"{prefix}{i}", prompt_token_ids=[10 + i] * n,
                    sampling_params=params, eos_token_id=EOS, arrival_time=float(i))
            for i, n in enumerate(lens)]


def fake_output(scheduler_output: SchedulerOutput, token_id: int = 7) -> ModelRunnerOutput:
    """One sampled token for every scheduled request that samples."""
    return ModelRunnerOutput({r.request_id: token_id for r in scheduler_output.scheduled
                              if r.sample})


def run_step(scheduler: Scheduler, token_id: int = 7) -> SchedulerOutput:
    out = scheduler.schedule()
    scheduler.update_from_output(out, fake_output(out, token_id))
    return out


def run_to_completion(scheduler: Scheduler, max_steps: int = 10_000) -> list[SchedulerOutput]:
    outputs = []
    while scheduler.has_unfinished_requests():
        outputs.append(run_step(scheduler))
        assert len(outputs) < max_steps, "scheduler made no progress"
    return outputs
