"""Token-level stop conditions, checked after each sampled token (pure Python). Stop strings need
the detokenized text and are checked by the engine's output processor instead."""
from __future__ import annotations

from distllm.core.request_state import Request, RequestStatus


def check_stop(request: Request, max_model_len: int) -> RequestStatus | None:
    """The finished status the request's newest token puts it in, or None to keep going.
    Sets `request.stop_reason` when a stop token id matched."""
    params = request.sampling_params
    last = request.output_token_ids[-1]
    if request.num_output_tokens >= params.min_tokens:
        if not params.ignore_eos and last == request.eos_token_id:
            return RequestStatus.FINISHED_STOPPED
        if last in params.stop_token_ids:
            request.stop_reason = last
            return RequestStatus.FINISHED_STOPPED
    if request.num_output_tokens >= params.max_tokens or request.num_tokens >= max_model_len:
        return RequestStatus.FINISHED_LENGTH
    return None
