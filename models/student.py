"""DINO ViT student (Caron et al. 2021) on timm's VisionTransformer: embeds BGR crops as CLS tokens."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from models import weights
from models.crops import crops_to_batch
from models.precision import autocast
from models.registry import EMBEDDERS, ModelError

DINO_URL = "https://dl.fbaipublicfiles.com/dino/{stem}/{stem}.pth"
FIX = ("pass the path of a DINO .pth file (owd run: --embedder-weights PATH; owd train-student: --init PATH), "
       "e.g. an official DINO *_pretrain.pth or a train-student output")
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # RGB, 0-255 units as crops_to_batch wants
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class Arch:
    """One ViT size and where its official DINO backbone weights live."""
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int = 224     # native input size: pos_embed holds (img_size / patch_size)^2 + 1 tokens
    stem: str | None = None  # official file is f"{stem}.pth"; None = no official weights (test variants)
    timm_name: str | None = None  # timm model whose ".dino" tag holds the same weights

    @property
    def filename(self) -> str | None:
        return f"{self.stem}.pth" if self.stem else None


ARCHS = {
    "vit_small_patch16": Arch(384, 12, 6, 16, stem="dino_deitsmall16_pretrain", timm_name="vit_small_patch16_224"),
    "vit_small_patch8": Arch(384, 12, 6, 8, stem="dino_deitsmall8_pretrain", timm_name="vit_small_patch8_224"),
    "vit_base_patch16": Arch(768, 12, 12, 16, stem="dino_vitbase16_pretrain", timm_name="vit_base_patch16_224"),
    "vit_base_patch8": Arch(768, 12, 12, 8, stem="dino_vitbase8_pretrain", timm_name="vit_base_patch8_224"),
    "test_vit": Arch(32, 2, 2, 8, img_size=32),
}


def cache_dir() -> Path:
    return weights.cache_dir("dino")


def dino_pos_embed(pos_embed: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """Resize pos_embed (1, 1+N, D) to an input of height x width pixels the way DINO does:
    bicubic with scale factor (grid + 0.1) / sqrt(N), no antialias. Returns (1, 1+h*w, D)."""
    n = pos_embed.shape[1] - 1
    h, w = int(height) // patch, int(width) // patch  # int(): fixed sizes when traced for export
    if h * w == n and height == width:
        return pos_embed
    side = math.sqrt(n)
    grid = pos_embed[:, 1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)  # (1, D, s, s)
    # The +0.1 keeps floor(s * scale) == h despite float error; it also shifts the sampling points
    # slightly versus a size-based resize, which DINO's weights were evaluated with.
    grid = F.interpolate(grid, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic")  # (1, D, h, w)
    if grid.shape[-2:] != (h, w):
        raise ModelError(f"position embedding resized to {tuple(grid.shape[-2:])}, expected {(h, w)}; "
                         f"use an input size that is a multiple of the patch size {patch}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)  # (1, h*w, D)
    return torch.cat([pos_embed[:, :1], grid], dim=1)


class _CLS(torch.nn.Module):
    def __init__(self, vit: "Student"):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.features(x)  # (B, D)


class Student(VisionTransformer):
    """A DINO ViT backbone; its state dict has exactly the keys of the official DINO checkpoints."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, arch: str = "vit_small_patch16", input_size: int = 224, batch_size: int = 64,
                 device: str = "cpu", precision: str = "auto", drop_path_rate: float = 0.0):
        if arch not in ARCHS:
            raise ModelError(f"unknown DINO arch {arch!r}; known: {', '.join(ARCHS)}")
        a = ARCHS[arch]
        if input_size < a.patch_size:
            raise ModelError(f"input_size {input_size} is smaller than the patch size {a.patch_size}")
        super().__init__(img_size=a.img_size, patch_size=a.patch_size, embed_dim=a.embed_dim, depth=a.depth,
                         num_heads=a.num_heads, mlp_ratio=4.0, qkv_bias=True, num_classes=0,
                         norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), dynamic_img_size=True,
                         drop_path_rate=drop_path_rate)
        self.arch, self.dim = arch, a.embed_dim
        self.input_size, self.batch_size = input_size, batch_size
        self.device_name, self.precision = device, precision

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) RGB normalized with ImageNet mean/std -> CLS token after the final norm, (B, dim)."""
        _, _, height, width = x.shape
        x = self.patch_embed(x).flatten(1, 2)  # (B, h*w, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+h*w, D)
        x = x + dino_pos_embed(self.pos_embed, height, width, self.patch_embed.patch_size[0])
        x = self.norm_pre(self.patch_drop(self.pos_drop(x)))
        x = self.norm(self.blocks(x))  # (B, 1+h*w, D)
        return x[:, 0]  # (B, D)

    def network(self) -> torch.nn.Module:
        """The fp32 network of `features`, for export to another runtime (models/compiled.py)."""
        return _CLS(self)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """crops: BGR uint8 (h, w, 3) of any sizes -> (N, dim) float32 CLS embeddings.

        Each crop is squashed to input_size x input_size (aspect not kept, see models/crops.py),
        INTER_AREA when shrinking and INTER_LINEAR when enlarging, then ImageNet-normalized."""
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        was_training = self.training
        self.eval()
        out = []
        with torch.inference_mode(), autocast(self.device_name, self.precision):
            for i in range(0, len(crops), self.batch_size):
                x = crops_to_batch(crops[i:i + self.batch_size], self.input_size, IMAGENET_MEAN, IMAGENET_STD)
                out.append(self.features(x.to(self.device_name)).float().cpu().numpy())  # (b, dim)
        self.train(was_training)
        return np.concatenate(out)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, arch: str = "vit_small_patch16", key: str = "teacher",
                        **options) -> "Student":
        """Load an official DINO backbone file or one of our train-student checkpoints, strictly.

        key picks "teacher" or "student" from a training checkpoint (DINO evaluates the teacher)."""
        model = cls(arch, **options)
        load_strict(model, backbone_state(read_checkpoint(path), key), str(path))
        return model.to(model.device_name)


def read_checkpoint(path: str | os.PathLike) -> dict:
    return weights.read_checkpoint(path, FIX + "; an upstream DINO training checkpoint pickles its args: "
                                   "re-save its 'teacher' entry alone")


def backbone_state(state: dict, key: str = "teacher") -> dict[str, torch.Tensor]:
    """The ViT backbone tensors of any accepted layout, under DINO's key names.

    Layouts: a plain backbone state dict; {"teacher": ..., "student": ...} (ours and DINO's training
    checkpoint) or {"model"/"state_dict": ...}; keys may carry "module." and "backbone." prefixes,
    in which case the "head." entries (the projection head) are dropped."""
    if key not in ("teacher", "student"):
        raise ModelError(f"checkpoint key must be 'teacher' or 'student', got {key!r}")
    for entry in (key, "model", "state_dict"):
        if isinstance(state.get(entry), dict):
            state = state[entry]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_strict(model: Student, state: dict, source: str) -> None:
    """Copy state into model; every key must be present with the same shape, or ModelError names them."""
    weights.load_strict(model, state, source, f"arch {model.arch!r}", f"pass the arch the checkpoint was trained "
                        f"with (one of {', '.join(ARCHS)}) or the matching file")


def fetch_official(arch: str) -> Path:
    """Path of the official DINO backbone for arch in the cache, downloaded on first use (from DINO's
    server, else timm's ".dino" copy on the Hugging Face hub: the same tensors under the same names)."""
    a = ARCHS[arch]
    if a.stem is None:
        raise ModelError(f"{arch} has no official DINO weights; pass a checkpoint path or weights='random'")
    url = DINO_URL.format(stem=a.stem)

    def from_timm(part: Path) -> None:
        import timm
        torch.save(timm.create_model(f"{a.timm_name}.dino", pretrained=True, num_classes=0).state_dict(), part)
    return weights.cached(cache_dir() / a.filename, {url: weights.from_url(url), f"timm {a.timm_name}.dino": from_timm},
                          "pass its path (owd run: --embedder-weights PATH; owd train-student: --init PATH)")


def build(arch: str, weights: str | None, device: str, precision: str, input_size: int, batch_size: int,
          checkpoint_key: str) -> Student:
    """weights: a checkpoint path, None for the official file (cached/downloaded) or "random"."""
    options = dict(input_size=input_size, batch_size=batch_size, device=device, precision=precision)
    if weights == "random" or (weights is None and ARCHS[arch].stem is None):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # test variants: the same random weights in every process
            model = Student(arch, **options)
    else:
        path = fetch_official(arch) if weights is None else weights
        model = Student.from_checkpoint(path, arch, key=checkpoint_key, **options)
    return model.to(device).eval().requires_grad_(False)


@EMBEDDERS.register("dino_vits16")
def dino_vits16(weights: str | None = None, device: str = "cpu", precision: str = "auto", input_size: int = 224,
                batch_size: int = 64, checkpoint_key: str = "teacher") -> Student:
    return build("vit_small_patch16", weights, device, precision, input_size, batch_size, checkpoint_key)


@EMBEDDERS.register("dino_vits8")
def dino_vits8(weights: str | None = None, device: str = "cpu", precision: str = "auto", input_size: int = 224,
               batch_size: int = 64, checkpoint_key: str = "teacher") -> Student:
    return build("vit_small_patch8", weights, device, precision, input_size, batch_size, checkpoint_key)


@EMBEDDERS.register("dino_vitb16")
def dino_vitb16(weights: str | None = None, device: str = "cpu", precision: str = "auto", input_size: int = 224,
                batch_size: int = 64, checkpoint_key: str = "teacher") -> Student:
    return build("vit_base_patch16", weights, device, precision, input_size, batch_size, checkpoint_key)


@EMBEDDERS.register("dino_vitb8")
def dino_vitb8(weights: str | None = None, device: str = "cpu", precision: str = "auto", input_size: int = 224,
               batch_size: int = 64, checkpoint_key: str = "teacher") -> Student:
    return build("vit_base_patch8", weights, device, precision, input_size, batch_size, checkpoint_key)


@EMBEDDERS.register("test_vit")
def test_vit(weights: str | None = None, device: str = "cpu", precision: str = "fp32", input_size: int = 32,
             batch_size: int = 64, checkpoint_key: str = "teacher") -> Student:
    """Tiny ViT (dim 32, depth 2, patch 8, native 32 px) with seed-0 random weights unless weights=PATH."""
    return build("test_vit", weights, device, precision, input_size, batch_size, checkpoint_key)
