"""DiffusionDet's official checkpoints: where they are published and how their (upstream, unchanged) keys load."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models import weights
from models.registry import ModelError

RELEASE_URL = "https://github.com/ShoufaChen/DiffusionDet/releases/download/v0.1/"
CHECKPOINTS = {"r50": "diffdet_coco_res50.pth", "r101": "diffdet_coco_res101.pth"}
FIX = f"pass the path of diffdet_coco_res50.pth (from {RELEASE_URL}) with --weights PATH"

# Diffusion schedule buffers saved in upstream checkpoints; recomputed by the model, so a file may omit them.
SCHEDULE_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


def cache_dir() -> Path:
    return weights.cache_dir("diffusiondet")


def fetch_checkpoint(arch: str, timeout: float = 30.0) -> Path:
    """Path of the official checkpoint for `arch`: the cached file, else downloaded into the cache."""
    if arch not in CHECKPOINTS:
        raise ModelError(f"no official DiffusionDet checkpoint for {arch!r}; known: {', '.join(CHECKPOINTS)}")
    url = RELEASE_URL + CHECKPOINTS[arch]
    return weights.cached(cache_dir() / CHECKPOINTS[arch], {url: weights.from_url(url, timeout)},
                          "pass its location with --weights PATH")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The `"model"` state dict of an upstream (detectron2-style) checkpoint file, or a bare state dict."""
    ckpt = weights.read_checkpoint(path, FIX)
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"checkpoint {path} holds no state dict of tensors under 'model'; "
                         f"expected an official DiffusionDet .pth file")
    return state


def load_upstream_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy `state` into `model`, requiring the two key sets to be equal (schedule buffers may be absent)
    and every shape to match; otherwise raise ModelError naming the offending keys."""
    weights.load_strict(model, state, source, "this DiffusionDet architecture",
                        "check that the weights file matches the chosen detector (r50 vs r101)",
                        recomputed=SCHEDULE_KEYS)
