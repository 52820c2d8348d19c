"""Offline batch API: `LLM(model=path, **engine_kwargs).generate(prompts, sampling_params)`."""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from distllm.config import EngineConfig
from distllm.engine.llm_engine import LLMEngine
from distllm.engine.outputs import RequestOutput
from distllm.sampling_params import SamplingParams

Prompt = str | list[int]


def _as_prompt_list(prompts: str | Sequence[str] | Sequence[list[int]]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(p, int) for p in prompts):
        raise TypeError("pass token-id prompts as a list of lists: [[1, 2, 3]]")
    return [p if isinstance(p, str) else list(p) for p in prompts]


class LLM:
    """Generates for a batch of prompts with continuous batching.

    Args:
        model: local HF-format model directory.
        mode: None runs one in-process engine; "disaggregated" or "colocated" runs instances
            on Ray (see DisaggConfig; its fields, e.g. prefill_tp, decode_pp,
            num_prefill_instances, are accepted as keyword arguments too).
        **kwargs: any EngineConfig field by name (dtype, block_size, num_kv_blocks,
            max_num_seqs, max_num_batched_tokens, max_model_len, load_format, seed, ...).
    """

    def __init__(self, model: str, mode: str | None = None, **kwargs: Any) -> None:
        from dataclasses import fields

        from distllm.disagg_config import DisaggConfig

        names = {f.name for f in fields(DisaggConfig)}
        disagg_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        config = EngineConfig.from_kwargs(model, **kwargs)
        if mode is None and not disagg_kwargs:
            self.engine = LLMEngine(config)
        else:
            from distllm.engine.disagg_controller import DisaggEngine

            disagg = DisaggConfig(mode=mode or "disaggregated", **disagg_kwargs)
            self.engine = DisaggEngine(config, disagg)
        self._ids = itertools.count()

    def shutdown(self) -> None:
        """Stop the Ray workers of a disaggregated / colocated-on-Ray engine (no-op otherwise)."""
        if hasattr(self.engine, "shutdown"):
            self.engine.shutdown()

    @classmethod
    def from_engine_config(cls, config: EngineConfig) -> LLM:
        """Build from a full EngineConfig (e.g. parsed from CLI flags)."""
        llm = cls.__new__(cls)
        llm.engine = LLMEngine(config)
        llm._ids = itertools.count()
        return llm

    def generate(self, prompts: str | Sequence[str] | Sequence[list[int]],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in input order."""
        prompt_list = _as_prompt_list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(prompt_list)
        else:
            params = list(sampling_params)
            if len(params) != len(prompt_list):
                raise ValueError(f"got {len(params)} sampling params for {len(prompt_list)} "
                                 "prompts")
        order: dict[str, int] = {}  # request id -> input position
        for i, (prompt, p) in enumerate(zip(prompt_list, params, strict=True)):
            request_id = str(next(self._ids))
            self.engine.add_request(request_id, prompt, p)
            order[request_id] = i
        return self._run(order, use_tqdm)

    def _run(self, order: dict[str, int], use_tqdm: bool) -> list[RequestOutput]:
        from tqdm import tqdm

        results: list[RequestOutput | None] = [None] * len(order)
        with tqdm(total=len(order), desc="generate", disable=not use_tqdm) as bar:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.finished and out.request_id in order:
                        results[order[out.request_id]] = out
                        bar.update(1)
        return [r for r in results if r is not None]
