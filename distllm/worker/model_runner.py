"""Turns a SchedulerOutput into model inputs (token ids, positions, slot mapping, block tables ->
AttentionMetadata), runs the forward in a `forward_batch` context and samples one token per request.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from distllm.core.scheduler_output import (
    LAST_SAMPLED,
    ModelRunnerOutput,
    ScheduledRequest,
    SchedulerOutput,
)
from distllm.layers.context import AttentionMetadata, forward_batch
from distllm.layers.sampler import Sampler, SamplingMetadata
from distllm.worker.cache_engine import KVCaches


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [num_tokens], int64
    positions: torch.Tensor  # [num_tokens], int64
    attn_metadata: AttentionMetadata
    logits_indices: torch.Tensor  # [num_sampled], int64; last token of each sampled request


def _pad(rows: list[list[int]]) -> list[list[int]]:
    width = max(len(row) for row in rows)
    return [row + [0] * (width - len(row)) for row in rows]


class ModelRunner:
    """Runs one batch of the model on one device.

    Args:
        model: a distllm model (`forward(input_ids, positions)`, `compute_logits(hidden)`).
        block_size: tokens per KV block.
        vocab_size: rows of the logits the sampler sees.
        seed: seeds the generator of requests that bring no seed of their own.
    """

    def __init__(self, model: nn.Module, block_size: int, vocab_size: int,
                 device: torch.device, seed: int = 0) -> None:
        self.model = model
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.device = device
        self.sampler = Sampler(torch.Generator(device).manual_seed(seed))
        self._generators: dict[str, torch.Generator] = {}  # request id -> its seeded generator
        # request id -> the token its last decode sampled: the input of a decode scheduled one
        # step ahead (LAST_SAMPLED), dropped when the request finishes
        self._last_sampled: dict[str, int] = {}

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput, kv_caches: KVCaches,
                      intermediate: torch.Tensor | None = None
                      ) -> ModelRunnerOutput | torch.Tensor:
        """Run the batch and sample. Pipeline stages: `intermediate` ([num_tokens, hidden]) is
        the previous stage's output; a stage before the last returns its hidden states."""
        for request_id in scheduler_output.finished_request_ids:
            self._generators.pop(request_id, None)
            self._last_sampled.pop(request_id, None)
        if not scheduler_output.has_forward:
            return ModelRunnerOutput()
        inputs = self.prepare_inputs(scheduler_output)
        with forward_batch(inputs.attn_metadata, kv_caches):
            if intermediate is None:
                hidden = self.model(inputs.input_ids, inputs.positions)  # [num_tokens, hidden]
            else:
                hidden = self.model(inputs.input_ids, inputs.positions, intermediate)
        if getattr(self.model, "lm_head", True) is None:  # NOTE: not the last pipeline stage
            return hidden
        sampled = [r for r in scheduler_output.scheduled if r.sample]
        if not sampled:
            return ModelRunnerOutput()
        logits = self.model.compute_logits(hidden[inputs.logits_indices])  # [num_sampled, vocab]
        metadata = SamplingMetadata.from_params(
            [r.sampling_params for r in sampled], [self._generator(r) for r in sampled],
            self.vocab_size, self.device, [r.suppressed_token_ids for r in sampled])
        token_ids = self.sampler(logits[:, :self.vocab_size].float(), metadata).tolist()
        out = dict(zip([r.request_id for r in sampled], token_ids, strict=True))
        for r in scheduler_output.decodes:
            self._last_sampled[r.request_id] = out[r.request_id]
        return ModelRunnerOutput(out)

    def generator_states(self, request_ids: list[str]) -> dict[str, torch.Tensor]:
        """States of the given requests' seeded generators (request id -> state), so another
        runner can continue their random streams (KV migration)."""
        return {i: self._generators[i].get_state() for i in request_ids if i in self._generators}

    def set_generator_state(self, request_id: str, state: torch.Tensor) -> None:
        generator = torch.Generator(self.device)
        generator.set_state(state)
        self._generators[request_id] = generator

    def _generator(self, request: ScheduledRequest) -> torch.Generator | None:
        seed = request.sampling_params.seed
        if seed is None:
            return None
        if request.request_id not in self._generators:
            self._generators[request.request_id] = torch.Generator(self.device).manual_seed(seed)
        return self._generators[request.request_id]

    def _slots(self, request: ScheduledRequest) -> list[int]:
        bs, table = self.block_size, request.block_table
        start = request.num_computed_tokens
        return [table[p // bs] * bs + p % bs for p in range(start, start + request.num_tokens)]

    def prepare_inputs(self, scheduler_output: SchedulerOutput) -> ModelInputs:
        prefills, decodes = scheduler_output.prefills, scheduler_output.decodes
        token_ids, positions, slots, last = [], [], [], []
        for r in prefills + decodes:
            start = r.num_computed_tokens
            token_ids += self._input_ids(r)
            positions += range(start, start + r.num_tokens)
            slots += self._slots(r)
            if r.sample:
                last.append(len(token_ids) - 1)
        num_prefill_tokens = sum(r.num_tokens for r in prefills)
        meta = AttentionMetadata(
            num_prefills=len(prefills), num_prefill_tokens=num_prefill_tokens,
            num_decode_tokens=len(decodes), slot_mapping=self._tensor(slots, torch.int64))
        if prefills:
            self._fill_prefill_metadata(meta, prefills)
        if decodes:
            meta.decode_block_tables = self._tensor(
                _pad([r.block_table for r in decodes]), torch.int32)
            meta.decode_context_lens = self._tensor(
                [r.num_computed_tokens + 1 for r in decodes], torch.int32)
        return ModelInputs(input_ids=self._tensor(token_ids, torch.int64),
                           positions=self._tensor(positions, torch.int64), attn_metadata=meta,
                           logits_indices=self._tensor(last, torch.int64))

    def _input_ids(self, request: ScheduledRequest) -> list[int]:
        """The request's new tokens, LAST_SAMPLED replaced by the token this runner sampled."""
        if request.token_ids != [LAST_SAMPLED]:
            return request.token_ids
        token_id = self._last_sampled.get(request.request_id)
        if token_id is None:
            raise RuntimeError(f"request {request.request_id}: decode scheduled ahead of a step "
                               "this worker never ran")
        return [token_id]

    def _fill_prefill_metadata(self, meta: AttentionMetadata,
                               prefills: list[ScheduledRequest]) -> None:
        cu_seqlens = [0]
        for r in prefills:
            cu_seqlens.append(cu_seqlens[-1] + r.num_tokens)
        num_cached = [r.num_computed_tokens for r in prefills]
        meta.cu_seqlens_q = self._tensor(cu_seqlens, torch.int32)
        meta.prefill_num_cached = self._tensor(num_cached, torch.int32)
        meta.prefill_block_tables = self._tensor(
            _pad([r.block_table for r in prefills]), torch.int32)
        meta.has_cached_prefix = any(n > 0 for n in num_cached)

    def _tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)
