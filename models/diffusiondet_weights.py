"""Finds, downloads and strictly loads DiffusionDet's official checkpoints (upstream key names, unchanged)."""
from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import torch
from torch import nn

from models.registry import ModelError

RELEASE_URL = "https://github.com/ShoufaChen/DiffusionDet/releases/download/v0.1/"
CHECKPOINTS = {"r50": "diffdet_coco_res50.pth", "r101": "diffdet_coco_res101.pth"}

# Diffusion schedule buffers saved in upstream checkpoints; recomputed by the model, so a file may omit them.
SCHEDULE_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


def cache_dir() -> Path:
    return Path(os.environ.get("OWD_CACHE", "~/.cache/owd")).expanduser() / "diffusiondet"


def fetch_checkpoint(arch: str, timeout: float = 30.0) -> Path:
    """Path of the official checkpoint for `arch`: the cached file, else downloaded into the cache."""
    if arch not in CHECKPOINTS:
        raise ModelError(f"no official DiffusionDet checkpoint for {arch!r}; known: {', '.join(CHECKPOINTS)}")
    name = CHECKPOINTS[arch]
    path = cache_dir() / name
    if path.is_file():
        return path
    url = RELEASE_URL + name
    partial = path.with_suffix(".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(partial, path)
    except OSError as exc:  # URLError, timeouts and disk errors are all OSErrors
        partial.unlink(missing_ok=True)
        raise ModelError(f"DiffusionDet weights {name} are not in {path.parent} and downloading {url} failed "
                         f"({exc}); download that file elsewhere and place it at {path}, "
                         f"or pass its location with --weights PATH") from None
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The `"model"` state dict of an upstream (detectron2-style) checkpoint file, or a bare state dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"DiffusionDet checkpoint {path} not found; pass the path of diffdet_coco_res50.pth "
                         f"(from {RELEASE_URL}) with --weights PATH")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ModelError(f"cannot read checkpoint {path} with weights_only=True "
                         f"({str(exc).splitlines()[0]}); is it an official DiffusionDet .pth file?") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"checkpoint {path} holds no state dict of tensors under 'model'; "
                         f"expected an official DiffusionDet .pth file")
    return state


def load_upstream_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy `state` into `model`, requiring the two key sets to be equal (schedule buffers may be absent)
    and every shape to match; otherwise raise ModelError naming the offending keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and k not in SCHEDULE_KEYS]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (file vs model): {', '.join(mismatched)}")
    if problems:
        raise ModelError(f"{source} does not fit this DiffusionDet architecture; " + "; ".join(problems)
                         + ". Check that the weights file matches the chosen detector (r50 vs r101).")
    model.load_state_dict({k: v for k, v in state.items() if k not in SCHEDULE_KEYS}, strict=False)
