"""Model runner input preparation: positions, slot mapping, block tables, logits rows."""
from __future__ import annotations

import pytest
import torch

from distllm.core.scheduler_output import LAST_SAMPLED, ScheduledRequest, SchedulerOutput
from distllm.sampling_params import SamplingParams
from distllm.worker.model_runner import ModelRunner


def _scheduled(request_id: str, token_ids: list[int], num_computed: int, block_table: list[int],
               sample: bool = True) -> ScheduledRequest:
    return ScheduledRequest(request_id, token_ids, num_computed, block_table, SamplingParams(),
                            sample=sample)


def test_prepare_inputs_for_a_mixed_batch() -> None:
    runner = ModelRunner(torch.nn.Identity(), block_size=4, vocab_size=10,
                         device=torch.device("cpu"))
    out = SchedulerOutput(
        prefills=[_scheduled("new", [1, 2, 3, 4, 5], 0, [7, 2]),
                  _scheduled("chunk", [6, 7], 3, [5, 6], sample=False)],
        decodes=[_scheduled("dec", [8], 9, [0, 1, 3])])
    inputs = runner.prepare_inputs(out)
    meta = inputs.attn_metadata
    assert inputs.input_ids.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert inputs.positions.tolist() == [0, 1, 2, 3, 4, 3, 4, 9]
    # slot = block_table[pos // 4] * 4 + pos % 4
    assert meta.slot_mapping.tolist() == [28, 29, 30, 31, 8, 23, 24, 13]
    assert (meta.num_prefills, meta.num_prefill_tokens, meta.num_decode_tokens) == (2, 7, 1)
    assert meta.cu_seqlens_q.tolist() == [0, 5, 7]
    assert meta.prefill_num_cached.tolist() == [0, 3] and meta.has_cached_prefix
    assert meta.prefill_block_tables.tolist() == [[7, 2], [5, 6]]
    assert meta.decode_block_tables.tolist() == [[0, 1, 3]]
    assert meta.decode_context_lens.tolist() == [10]
    assert inputs.logits_indices.tolist() == [4, 7]  # the partial chunk samples nothing


class _NextToken(torch.nn.Module):
    """A fake model whose greedy next token is the input token + 1."""

    vocab = 16

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot((input_ids + 1) % self.vocab, self.vocab).float()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def test_a_decode_scheduled_ahead_is_fed_the_token_sampled_last() -> None:
    runner = ModelRunner(_NextToken(), block_size=4, vocab_size=16, device=torch.device("cpu"))
    greedy = SamplingParams(temperature=0.0)

    def decode(token: int, position: int, finished: tuple[str, ...] = ()) -> SchedulerOutput:
        return SchedulerOutput(decodes=[ScheduledRequest("a", [token], position, [0, 1, 2],
                                                         greedy)],
                               finished_request_ids=list(finished))

    assert runner.execute_model(decode(5, 7), []).sampled_token_ids == {"a": 6}
    assert runner.execute_model(decode(LAST_SAMPLED, 8), []).sampled_token_ids == {"a": 7}
    assert runner.execute_model(decode(LAST_SAMPLED, 9), []).sampled_token_ids == {"a": 8}
    with pytest.raises(RuntimeError, match="never ran"):  # dropped with the finished request
        runner.execute_model(decode(LAST_SAMPLED, 10, finished=("a",)), [])
