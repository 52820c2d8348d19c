"""One stage engine (colocated for now): a scheduler, a worker and the output processor.

    step():  scheduler.schedule() -> worker.execute_model() -> scheduler.update_from_output()
             -> output processor (detokenize, stop strings) -> RequestOutputs
"""
from __future__ import annotations

import time

from distllm.config import EngineConfig
from distllm.core.block_manager import BlockManager
from distllm.core.colocated_scheduler import ColocatedScheduler
from distllm.core.request_state import Request, RequestStatus
from distllm.engine.output_processor import OutputProcessor
from distllm.engine.outputs import RequestOutput
from distllm.sampling_params import SamplingParams
from distllm.tokenizer import Tokenizer
from distllm.worker.worker import Worker


def new_request(tokenizer: Tokenizer, max_seq_len: int, request_id: str, prompt: str | list[int],
                sampling_params: SamplingParams | None,
                arrival_time: float | None) -> tuple[Request, str | None]:
    """(request, prompt text or None): tokenize a text prompt and check it, the admission rule
    every engine shares. Raises ValueError on an empty prompt or one over max_seq_len tokens."""
    text = prompt if isinstance(prompt, str) else None
    token_ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not token_ids:
        raise ValueError(f"request {request_id}: the prompt is empty")
    if len(token_ids) > max_seq_len:
        raise ValueError(f"request {request_id}: prompt of {len(token_ids)} tokens exceeds "
                         f"max_model_len={max_seq_len}")
    request = Request(
        request_id=request_id, prompt_token_ids=token_ids,
        sampling_params=sampling_params or SamplingParams(),
        eos_token_id=tokenizer.eos_token_id,
        arrival_time=time.monotonic() if arrival_time is None else arrival_time)
    return request, text


class LLMEngine:
    """Runs requests to completion one `step()` at a time (single process, one device)."""

    def __init__(self, config: EngineConfig) -> None:
        if config.parallel.world_size != 1:
            raise NotImplementedError("the colocated single-process engine runs tp=1, pp=1; "
                                      "use the disaggregated engine for TP/PP")
        self.config = config
        self.tokenizer = Tokenizer.from_pretrained(config.model.tokenizer_path)
        self.worker = Worker(config)
        num_blocks, num_swap_blocks = self.worker.determine_num_blocks()
        self.worker.init_cache(num_blocks, num_swap_blocks)
        cache = config.cache
        self.block_manager = BlockManager(num_blocks, cache.block_size, cache.watermark,
                                          num_swap_blocks)
        self.scheduler = ColocatedScheduler(config.scheduler, self.block_manager,
                                            config.model.max_seq_len)
        self.output_processor = OutputProcessor(self.tokenizer)

    def add_request(self, request_id: str, prompt: str | list[int],
                    sampling_params: SamplingParams | None = None,
                    arrival_time: float | None = None) -> Request:
        """Queue a request (text is tokenized here). Raises ValueError on an empty or too long
        prompt."""
        request, text = new_request(self.tokenizer, self.config.model.max_seq_len, request_id,
                                    prompt, sampling_params, arrival_time)
        self.scheduler.add_request(request)
        self.output_processor.add_request(request, text)
        return request

    def abort_request(self, request_ids: str | list[str]) -> None:
        """Finish requests now and free their blocks; the next step reports them as aborted."""
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def step(self) -> list[RequestOutput]:
        scheduler_output = self.scheduler.schedule()
        model_output = self.worker.execute_model(scheduler_output)
        updated = self.scheduler.update_from_output(scheduler_output, model_output)
        return self.output_processor.process(updated, self.scheduler)

    def has_unfinished_requests(self) -> bool:
        """True while a step() is still needed: requests run, or an aborted request's final
        output has not been reported yet."""
        return (self.scheduler.has_unfinished_requests()
                or self.output_processor.has_unfinished_requests())

    @property
    def num_unfinished_requests(self) -> int:
        return self.scheduler.num_unfinished_requests

    def stats(self) -> dict[str, int]:
        """Queue lengths and KV block usage right now (for logs and metrics endpoints)."""
        s, bm = self.scheduler, self.block_manager
        return {"num_running": len(s.running), "num_waiting": len(s.waiting),
                "num_swapped": len(s.swapped), "num_blocks": bm.num_blocks,
                "num_free_blocks": bm.num_free_blocks,
                "num_free_swap_blocks": bm.num_free_swap_blocks}
