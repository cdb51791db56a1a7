"""Chooses the inference precision: bf16 autocast where the CPU has native bf16, fp32 elsewhere."""
from __future__ import annotations

import contextlib
import functools

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX-BF16, where bf16 matmuls are native and fast."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: str, precision: str = "auto"):
    """Context for inference: precision is 'auto' (bf16 where fast), 'bf16' or 'fp32'."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    device_type = torch.device(device).type
    use_bf16 = precision == "bf16" or (
        precision == "auto" and (device_type == "cuda" or (device_type == "cpu" and cpu_has_bf16())))
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
