"""Chooses the inference precision: bf16 autocast where the CPU makes it faster, fp32 elsewhere."""
from __future__ import annotations

import contextlib
import functools

import torch


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def cpu_bf16(matmul_heavy: bool = True) -> bool:
    """Whether bf16 autocast pays off on this CPU. With AMX-BF16 it does for every model. With only
    AVX512-BF16 it did for EfficientNet-Lite0 (depthwise convs: 1.4x at 128 px, 1.8x at 224 px) but
    not for ViT or DiffusionDet (0.55-0.9x: bf16 GEMMs without AMX are slower), hence `matmul_heavy`."""
    flags = _cpu_flags()
    return "amx_bf16" in flags or (not matmul_heavy and "avx512_bf16" in flags)


def autocast(device: str, precision: str = "auto", matmul_heavy: bool = True):
    """Context for inference: precision is 'auto' (bf16 where measured faster), 'bf16' or 'fp32'."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    device_type = torch.device(device).type
    use_bf16 = precision == "bf16" or (
        precision == "auto" and (device_type == "cuda" or (device_type == "cpu" and cpu_bf16(matmul_heavy))))
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
