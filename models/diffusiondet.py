"""DiffusionDet (Chen et al. 2022) on plain torch/torchvision: denoises random boxes into COCO detections."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import batched_nms

from models.coco import COCO_NAMES
from models.detections import Detections
from models.diffusiondet_head import DynamicHead, HeadConfig
from models.diffusiondet_weights import fetch_checkpoint, load_upstream_state_dict, read_state_dict
from models.precision import autocast
from models.registry import DETECTORS, ModelError
from models.resnet_fpn import RESNET_BLOCKS, BackboneConfig, ResNetFPN

TIMESTEPS = 1000


@dataclass(frozen=True)
class DiffusionDetConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    num_proposals: int = 500
    sampling_steps: int = 1
    snr_scale: float = 2.0
    renewal_threshold: float = 0.5  # proposals scoring above it survive to the next step
    nms_threshold: float = 0.5
    min_size: int = 800             # shortest side after resizing
    max_size: int = 1333            # longest side cap
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0-255
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)


ARCHS = {
    "r50": DiffusionDetConfig(),
    "r101": DiffusionDetConfig(backbone=BackboneConfig(blocks=RESNET_BLOCKS[101])),
    "test": DiffusionDetConfig(
        backbone=BackboneConfig(blocks=(1, 1, 1, 1), stem_channels=8, res2_out_channels=16, fpn_channels=32),
        head=HeadConfig(hidden_dim=32, dim_feedforward=64, num_stages=2, dim_dynamic=8),
        num_proposals=16, min_size=64, max_size=128),
}
OPTIONS = ("num_proposals", "sampling_steps", "min_size", "max_size")  # config fields settable per model
VALID = OPTIONS + ("device", "precision", "score_threshold", "seed")


def check_options(options: dict) -> None:
    if unknown := sorted(set(options) - set(VALID)):
        raise ModelError(f"unknown DiffusionDet option(s) {', '.join(unknown)}; valid: {', '.join(VALID)}")


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule -> betas (timesteps,) float64."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return torch.clip(1 - (alphas_cumprod[1:] / alphas_cumprod[:-1]), 0, 0.999)


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def resized_shape(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge output (h, w): shortest side to min_size, longest capped at max_size."""
    scale = min_size / min(h, w)
    new_h, new_w = (min_size, scale * w) if h < w else (scale * h, min_size)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def noise_generator(noise: torch.Tensor) -> torch.Generator:
    """A generator seeded from one image's initial noise (P, 4), so the later draws (DDIM noise, renewed
    boxes) are replayable and independent of the batch the image is in."""
    digest = hashlib.sha256(noise.detach().float().cpu().contiguous().numpy().tobytes()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class DiffusionDet(nn.Module):
    """ResNet-FPN + DynamicHead with DDIM box denoising; `detect` takes BGR frames, returns Detections."""

    class_names = COCO_NAMES

    def __init__(self, cfg: DiffusionDetConfig, device: str = "cpu", precision: str = "auto",
                 score_threshold: float = 0.5, seed: int | None = None):
        super().__init__()
        if cfg.sampling_steps < 1 or cfg.num_proposals < 1:
            raise ModelError(f"sampling_steps and num_proposals must be >= 1, got "
                             f"{cfg.sampling_steps} and {cfg.num_proposals}")
        if precision not in ("auto", "bf16", "fp32"):
            raise ModelError(f"precision must be auto, bf16 or fp32, got {precision!r}")
        self.cfg, self.device, self.precision = cfg, device, precision
        self.score_threshold, self.seed = score_threshold, seed
        self.backbone = ResNetFPN(cfg.backbone)
        self.head = DynamicHead(cfg.head)
        # Upstream keeps the whole float64 schedule as buffers; same names so checkpoints map 1:1.
        betas = cosine_beta_schedule(TIMESTEPS)
        ac = torch.cumprod(1.0 - betas, dim=0)
        ac_prev = F.pad(ac[:-1], (1, 0), value=1.0)
        posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        for name, value in (
                ("betas", betas), ("alphas_cumprod", ac), ("alphas_cumprod_prev", ac_prev),
                ("sqrt_alphas_cumprod", ac.sqrt()), ("sqrt_one_minus_alphas_cumprod", (1.0 - ac).sqrt()),
                ("log_one_minus_alphas_cumprod", torch.log(1.0 - ac)),
                ("sqrt_recip_alphas_cumprod", torch.sqrt(1.0 / ac)),
                ("sqrt_recipm1_alphas_cumprod", torch.sqrt(1.0 / ac - 1)),
                ("posterior_variance", posterior_variance),
                ("posterior_log_variance_clipped", torch.log(posterior_variance.clamp(min=1e-20))),
                ("posterior_mean_coef1", betas * ac_prev.sqrt() / (1.0 - ac)),
                ("posterior_mean_coef2", (1.0 - ac_prev) * torch.sqrt(1.0 - betas) / (1.0 - ac))):
            self.register_buffer(name, value)
        self.eval()

    @classmethod
    def from_checkpoint(cls, path, arch: str = "r50", **overrides) -> "DiffusionDet":
        """Build `arch` ("r50", "r101", "test") and load an upstream checkpoint strictly.
        overrides: num_proposals, sampling_steps, min_size, max_size, device, precision, score_threshold, seed."""
        check_options(overrides)
        state = read_state_dict(path)  # before building, so a bad path fails fast
        model = cls.build(arch, **overrides)
        load_upstream_state_dict(model, state, source=str(path))
        return model.prepare()

    @classmethod
    def build(cls, arch: str, **overrides) -> "DiffusionDet":
        """`arch` with random weights (PyTorch's default init; the head as upstream initialises it)."""
        if arch not in ARCHS:
            raise ModelError(f"unknown DiffusionDet arch {arch!r}; known: {', '.join(ARCHS)}")
        check_options(overrides)
        cfg_opts = {k: overrides.pop(k) for k in OPTIONS if k in overrides}
        model = cls(replace(ARCHS[arch], **cfg_opts), **overrides)
        for p in model.head.parameters():  # upstream's _reset_parameters: xavier, then focal-loss prior bias
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            if p.shape[-1] == model.cfg.head.num_classes:
                nn.init.constant_(p, -math.log((1 - 0.01) / 0.01))
        return model

    def prepare(self) -> "DiffusionDet":
        """Move to the device in channels-last layout (faster convs on CPU, oneDNN) with the frozen norms
        folded into the convs, for inference."""
        self.to(self.device, memory_format=torch.channels_last).eval()
        with torch.no_grad():
            self.backbone.fold_norms()
        return self

    # ---- preprocessing -------------------------------------------------------------------------
    def preprocess(self, frame: np.ndarray) -> torch.Tensor:
        """BGR uint8 (H, W, 3) -> normalised RGB (3, h, w) float32 at the test resolution (PIL bilinear)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")
        h, w = resized_shape(*frame.shape[:2], self.cfg.min_size, self.cfg.max_size)
        rgb = Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1])).resize((w, h), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1)  # (3, h, w)
        mean = torch.tensor(self.cfg.pixel_mean).view(3, 1, 1)
        std = torch.tensor(self.cfg.pixel_std).view(3, 1, 1)
        return (x - mean) / std

    # ---- inference -----------------------------------------------------------------------------
    def detect(self, frames: list[np.ndarray], noise: torch.Tensor | None = None) -> list[Detections]:
        """frames: BGR uint8 images; noise: (len(frames), num_proposals, 4) initial box signal as upstream
        draws it with torch.randn. Given noise (or the seed option) the result is deterministic and each
        frame's detections do not depend on the other frames of the batch."""
        p = self.cfg.num_proposals
        if noise is not None and tuple(noise.shape) != (len(frames), p, 4):
            raise ValueError(f"noise must have shape ({len(frames)}, {p}, 4), got {tuple(noise.shape)}")
        if noise is None and self.seed is not None:
            noise = torch.randn(p, 4, generator=torch.Generator().manual_seed(self.seed)).expand(len(frames), p, 4)
        if noise is None:
            noise, gens = torch.randn(len(frames), p, 4), [None] * len(frames)  # upstream's global-RNG draws
        else:
            gens = [noise_generator(n) for n in noise]
        images = [self.preprocess(f) for f in frames]
        # Frames are batched only with frames of the same resized size: padding to a common size would
        # change the features near the border, and with them the detections.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape[1:]), []).append(i)
        results: list[Detections] = [Detections.empty()] * len(frames)
        with torch.inference_mode(), autocast(self.device, self.precision):
            for (h, w), idx in groups.items():
                batch = torch.stack([images[i] for i in idx])                                  # (B, 3, h, w)
                ph, pw = (-h) % ResNetFPN.size_divisibility, (-w) % ResNetFPN.size_divisibility
                batch = F.pad(batch, (0, pw, 0, ph)).to(self.device, memory_format=torch.channels_last)
                # roi_align wants NCHW fp32; convert once here rather than in every stage and step.
                feats = [f.float().contiguous() for f in self.backbone(batch)]
                outs = self.sample(feats, (h, w), noise[idx].to(self.device, torch.float32), [gens[i] for i in idx])
                for i, (boxes, scores, labels) in zip(idx, outs):
                    results[i] = self.postprocess(boxes, scores, labels, (h, w), frames[i].shape[:2])
        return results

    def sample(self, feats: list[torch.Tensor], size: tuple[int, int], noise: torch.Tensor,
               gens: list[torch.Generator | None]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """DDIM (eta 1) from noise (B, P, 4) with box renewal and, for several steps, an ensemble over steps;
        per image, boxes (N, 4) xyxy in resized-image pixels, scores (N,), labels (N,) after NMS."""
        b, p = noise.shape[:2]
        s = self.cfg.snr_scale
        whwh = torch.tensor([size[1], size[0], size[1], size[0]], dtype=torch.float32, device=noise.device)
        times = torch.linspace(-1, TIMESTEPS - 1, steps=self.cfg.sampling_steps + 1).int().tolist()[::-1]
        ensemble = self.cfg.sampling_steps > 1
        kept: list[list[tuple]] = [[] for _ in range(b)]
        img = noise                                                               # (B, P, 4)
        for time, time_next in zip(times[:-1], times[1:]):
            t = torch.full((b,), time, dtype=torch.long, device=noise.device)
            boxes = cxcywh_to_xyxy((torch.clamp(img, -s, s) / s + 1) / 2) * whwh  # (B, P, 4) pixels
            logits, pred = self.head(feats, boxes, t)                             # (B, P, K), (B, P, 4)
            x_start = torch.clamp((xyxy_to_cxcywh(pred / whwh) * 2 - 1) * s, -s, s)  # (B, P, 4)
            # float64 like upstream's schedule lookups, which promote pred_noise and the next boxes.
            pred_noise = ((self.sqrt_recip_alphas_cumprod[t].view(b, 1, 1) * img - x_start)
                          / self.sqrt_recipm1_alphas_cumprod[t].view(b, 1, 1))   # (B, P, 4)
            if time_next < 0:
                break  # the last step's boxes are the answer (and, as upstream, not part of the ensemble)
            alpha, alpha_next = self.alphas_cumprod[time], self.alphas_cumprod[time_next]
            sigma = ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()  # eta = 1
            c = (1 - alpha_next - sigma ** 2).sqrt()
            next_img = []
            for i in range(b):  # renewal keeps a different number of boxes per image
                keep = torch.sigmoid(logits[i]).max(-1).values > self.cfg.renewal_threshold  # (P,)
                x0, eps, xt = x_start[i, keep], pred_noise[i, keep], img[i, keep]
                z = torch.randn(xt.shape, dtype=xt.dtype, generator=gens[i]).to(xt.device)
                xt = x0 * alpha_next.sqrt() + c * eps + sigma * z                 # (n_keep, 4)
                fresh = torch.randn(p - len(xt), 4, generator=gens[i]).to(xt.device)
                next_img.append(torch.cat((xt, fresh)))                           # (P, 4)
                if ensemble:
                    kept[i].append(self.top_candidates(logits[i], pred[i]))
            img = torch.stack(next_img)
        out = []
        for i in range(b):
            parts = kept[i] if ensemble else [self.top_candidates(logits[i], pred[i])]
            boxes, scores, labels = (torch.cat(x) for x in zip(*parts))
            keep = batched_nms(boxes.float(), scores, labels, self.cfg.nms_threshold)  # sorted by score
            out.append((boxes[keep], scores[keep], labels[keep]))
        return out

    def top_candidates(self, logits: torch.Tensor, boxes: torch.Tensor):
        """logits (P, K), boxes (P, 4) -> the P best (box, class) pairs by sigmoid score: (P, 4), (P,), (P,)."""
        p, k = logits.shape
        scores, idx = torch.sigmoid(logits).flatten().topk(p, sorted=False)  # (P,)
        return boxes[idx // k], scores, idx % k

    def postprocess(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                    size: tuple[int, int], orig: tuple[int, int]) -> Detections:
        """Rescale boxes from the resized image to the original frame, clip, drop empty and low-score ones."""
        boxes = boxes.float().cpu().clone()
        boxes[:, 0::2] *= orig[1] / size[1]
        boxes[:, 1::2] *= orig[0] / size[0]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, orig[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, orig[0])
        keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (scores.cpu() >= self.score_threshold))
        return Detections(boxes[keep].numpy(), scores.cpu()[keep].float().numpy(),
                          labels.cpu()[keep].to(torch.int64).numpy())


def _create(arch: str, weights: str | None, **kw) -> DiffusionDet:
    """weights: a checkpoint path; None for the cached/downloaded official file; "random" for random weights
    (benchmarks, offline smoke runs)."""
    if weights == "random":
        return DiffusionDet.build(arch, **kw).prepare()
    if weights is None:
        weights = fetch_checkpoint(arch)
    return DiffusionDet.from_checkpoint(weights, arch=arch, **kw)


@DETECTORS.register("diffusiondet_r50")
def diffusiondet_r50(weights: str | None = None, device: str = "cpu", precision: str = "auto",
                     score_threshold: float = 0.5, **options) -> DiffusionDet:
    """options: num_proposals, sampling_steps, min_size, max_size, seed."""
    return _create("r50", weights, device=device, precision=precision, score_threshold=score_threshold, **options)


@DETECTORS.register("diffusiondet_r101")
def diffusiondet_r101(weights: str | None = None, device: str = "cpu", precision: str = "auto",
                      score_threshold: float = 0.5, **options) -> DiffusionDet:
    return _create("r101", weights, device=device, precision=precision, score_threshold=score_threshold, **options)


@DETECTORS.register("test_diffusiondet")
def test_diffusiondet(weights: str | None = None, device: str = "cpu", precision: str = "fp32",
                      score_threshold: float = 0.0, **options) -> DiffusionDet:
    """Tiny random-weight model for tests (same random weights every time); weights loads a tiny checkpoint."""
    if weights not in (None, "random"):
        return _create("test", weights, device=device, precision=precision,
                       score_threshold=score_threshold, **options)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DiffusionDet.build("test", device=device, precision=precision,
                                   score_threshold=score_threshold, **options)
    return model.prepare()
