"""Analytic roofline fallback: profile coefficients from model dimensions and hardware specs, for
models or GPUs with no measured profile. Same shape as a measured profile, so the simulator does
not care where its figures come from.

Prefill is compute bound: b = 2*params/tp FLOPs per token (+ two all-reduces per layer over
NVLink), c = causal attention FLOPs per l^2. Decode is bandwidth bound: a = weights/tp read once
per iteration, b = KV bytes per context token, c = per-request FLOPs and all-reduce time.
"""
from __future__ import annotations

from simdist.hardware import HardwareSpec, ModelSpec, get_hardware, get_model
from simdist.profile import LatencyProfile

MFU = 0.55  # achievable share of peak FLOPs in large GEMMs
MBU = 0.80  # achievable share of HBM bandwidth
LAUNCH_MS = 4.0  # kernel launches + framework per iteration (eager, no CUDA graphs)
TPS = (1, 2, 4, 8)


def _allreduce_ms_per_token(m: ModelSpec, hw: HardwareSpec, tp: int) -> float:
    if tp == 1:
        return 0.0
    ring = 2 * (tp - 1) / tp  # ring all-reduce traffic factor
    nbytes = 2 * m.num_layers * m.hidden_size * m.dtype_bytes * ring
    return nbytes / (hw.nvlink_gb_s * 1e9) * 1e3


def roofline_coeffs(m: ModelSpec, hw: HardwareSpec, tp: int) -> dict:
    """{prefill, decode_small, decode_large, decode_threshold} in ms for one TP degree."""
    flops = hw.peak_tflops * 1e12 * MFU * tp  # aggregate over the TP group
    hbm = hw.hbm_gb_s * 1e9 * MBU * tp
    comm = _allreduce_ms_per_token(m, hw, tp)
    prefill_b = 2 * m.num_params / flops * 1e3 + comm
    # causal attention: QK^T and PV, 2 FLOPs per MAC, half the l x l square
    prefill_c = 2 * m.num_layers * m.hidden_size / flops * 1e3
    weights_ms = m.weight_bytes / hbm * 1e3
    kv_ms = m.kv_bytes_per_token / hbm * 1e3
    per_req_ms = 2 * m.num_params / flops * 1e3 + comm
    decode = [LAUNCH_MS + weights_ms, kv_ms, per_req_ms]
    return {"prefill": [LAUNCH_MS, prefill_b, prefill_c], "decode_small": decode,
            "decode_large": list(decode), "decode_threshold": 95}


def roofline_profile(models: list[str], hardware: str,
                     tps: tuple[int, ...] = TPS) -> LatencyProfile:
    """A profile for `models` on `hardware` at the TP degrees that divide the head count."""
    hw = get_hardware(hardware)
    out = {}
    for name in models:
        m = get_model(name)
        # NOTE: TP degrees whose weights do not fit are kept: PP may make them fit, and
        # kv_capacity() (memory minus weights) rules out what still does not.
        fits = [tp for tp in tps if m.num_heads % tp == 0]
        out[m.name] = {"kv_bytes_per_token": m.kv_bytes_per_token,
                       "tp": {str(tp): roofline_coeffs(m, hw, tp) for tp in fits},
                       "kv_capacity_tokens": {}}
    return LatencyProfile(hw.name, out, "roofline", {}, {},
                          f"roofline({hardware}, mfu={MFU}, mbu={MBU})")
