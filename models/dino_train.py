"""DINO self-distillation (paper Eq. 5-6): multi-crop views, projection head, centered EMA teacher, one step."""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2

from models.precision import autocast
from models.student import IMAGENET_MEAN, IMAGENET_STD, Student


@dataclass(frozen=True)
class DinoConfig:
    """DINO's hyper-parameters (main_dino.py defaults), schedules counted in optimizer steps."""
    out_dim: int = 65536            # prototypes of the head's last layer
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    global_size: int = 224
    local_size: int = 96
    local_crops: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996  # cosine-increased to 1 over training
    lr: float = 5e-4                 # per 256 images; scaled linearly by batch size
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0           # per-parameter gradient norm bound, as DINO clips; 0 = off
    freeze_last_layer_steps: int = 0
    drop_path_rate: float = 0.1
    precision: str = "fp32"          # "auto"/"bf16": bf16 autocast forward; slower here without AMX (docs)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "DinoConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def cosine_schedule(start: float, end: float, steps: int, warmup_steps: int = 0, warmup_from: float = 0.0):
    """(steps,) values: linear warm-up from warmup_from to start, then half a cosine from start to end."""
    warmup = np.linspace(warmup_from, start, min(warmup_steps, steps), endpoint=False)
    t = np.arange(steps - len(warmup)) / max(steps - len(warmup), 1)
    return np.concatenate([warmup, end + 0.5 * (start - end) * (1 + np.cos(np.pi * t))])


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight = g * v / ||v|| per output row; names match nn.utils.weight_norm."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())  # (out, in)
        # DINO freezes g at 1 (norm_last_layer=True), so it is a buffer here; the state-dict key is the same.
        self.register_buffer("weight_g", torch.ones(out_dim, 1))  # (out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_g * F.normalize(self.weight_v, dim=1))


class DINOHead(nn.Module):
    """3-layer MLP -> L2-normalized bottleneck -> weight-normalized prototypes; keys as DINO's head."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)  # (B, bottleneck) on the unit sphere
        return self.last_layer(x)  # (B, out_dim)


class MultiCropNet(nn.Module):
    """Backbone + head over a list of views; views of one resolution share a backbone call."""

    def __init__(self, backbone: Student, head: DINOHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        """views: V tensors (B, 3, S_v, S_v) -> (V*B, out_dim), view-major."""
        feats, i = [], 0
        while i < len(views):
            j = i
            while j < len(views) and views[j].shape[-1] == views[i].shape[-1]:
                j += 1
            feats.append(self.backbone.features(torch.cat(views[i:j])))  # ((j-i)*B, D)
            i = j
        return self.head(torch.cat(feats))


class DinoLoss(nn.Module):
    """Cross-entropy of centered, sharpened teacher softmax vs student softmax over all view pairs."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float,
                n_views: int) -> torch.Tensor:
        """student_out (V*B, K) for V views, teacher_out (2*B, K) for the 2 global views."""
        log_p = F.log_softmax(student_out / self.student_temp, dim=-1).chunk(n_views)  # V x (B, K)
        q = F.softmax((teacher_out - self.center) / teacher_temp, dim=-1).detach().chunk(2)  # 2 x (B, K)
        total, terms = 0.0, 0
        for iq, q_i in enumerate(q):
            for v, log_p_v in enumerate(log_p):
                if v != iq:  # a student view is never matched to the same teacher view
                    total = total + (-q_i * log_p_v).sum(dim=-1).mean()
                    terms += 1
        self.update_center(teacher_out)
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = teacher_out.mean(dim=0, keepdim=True)  # (1, K)
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


class MultiCrop:
    """RGB uint8 (3, H, W) image -> 2 global + N local normalized float views (DINO's augmentations)."""

    def __init__(self, cfg: DinoConfig):
        flip_jitter = [v2.RandomHorizontalFlip(), v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                       v2.RandomGrayscale(p=0.2)]
        norm = [v2.ToDtype(torch.float32, scale=False),
                v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))]  # 0-255 units

        def blur(p, size):
            kernel = max(3, (size // 10) | 1)  # DINO uses 23 px at 224; keep it proportional for small views
            return v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=p)

        g, loc = cfg.global_size, cfg.local_size
        crop = dict(interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        self.global1 = v2.Compose([v2.RandomResizedCrop(g, scale=cfg.global_scale, **crop), *flip_jitter,
                                   blur(1.0, g), *norm])
        self.global2 = v2.Compose([v2.RandomResizedCrop(g, scale=cfg.global_scale, **crop), *flip_jitter,
                                   blur(0.1, g), v2.RandomSolarize(128, p=0.2), *norm])
        self.local = v2.Compose([v2.RandomResizedCrop(loc, scale=cfg.local_scale, **crop), *flip_jitter,
                                 blur(0.5, loc), *norm])
        self.local_crops = cfg.local_crops

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [self.global1(image), self.global2(image)] + [self.local(image) for _ in range(self.local_crops)]


class DinoTrainer:
    """Student and EMA teacher (same ViT + head), AdamW with cosine schedules; `step` is one update."""

    def __init__(self, backbone: Student, cfg: DinoConfig, total_steps: int, batch_size: int):
        self.cfg, self.total_steps = cfg, total_steps
        head = DINOHead(backbone.dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim)
        self.student = MultiCropNet(backbone, head).train().requires_grad_(True)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        for m in self.teacher.modules():  # the teacher never drops paths
            if hasattr(m, "drop_prob"):
                m.drop_prob = 0.0
        self.loss = DinoLoss(cfg.out_dim, cfg.student_temp, cfg.center_momentum)
        params = [p for p in self.student.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]  # no weight decay on biases and norms, as DINO
        self.optimizer = torch.optim.AdamW([{"params": decay}, {"params": [p for p in params if p.ndim <= 1],
                                                                "weight_decay": 0.0}])
        n = max(total_steps, 1)
        self.lr = cosine_schedule(cfg.lr * batch_size / 256, cfg.min_lr, n, cfg.warmup_steps)
        self.wd = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, n)
        self.momentum = cosine_schedule(cfg.momentum_teacher, 1.0, n)
        warm = min(cfg.warmup_teacher_temp_steps, n)
        self.teacher_temp = np.concatenate([np.linspace(cfg.warmup_teacher_temp, cfg.teacher_temp, warm),
                                            np.full(n - warm, cfg.teacher_temp)])
        self.step_count = 0

    def step(self, views: list[torch.Tensor]) -> dict[str, float]:
        """views: 2 global (B, 3, G, G) then local (B, 3, L, L) tensors on the model's device."""
        it = min(self.step_count, len(self.lr) - 1)
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr[it])
            if i == 0:
                group["weight_decay"] = float(self.wd[it])
        device = views[0].device.type
        with autocast(device, self.cfg.precision):
            with torch.no_grad():
                teacher_out = self.teacher(views[:2]).float()  # (2B, K): the teacher sees global views only
            student_out = self.student(views).float()  # (V*B, K)
        loss = self.loss(student_out, teacher_out, float(self.teacher_temp[it]), len(views))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"DINO loss is {loss.item()} at step {self.step_count}; lower --lr or "
                                     "use --precision fp32")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip_grad:
            for p in self.student.parameters():
                if p.grad is not None:
                    norm = p.grad.norm()
                    p.grad.mul_(torch.clamp(self.cfg.clip_grad / (norm + 1e-6), max=1.0))
        if self.step_count < self.cfg.freeze_last_layer_steps:
            for p in self.student.head.last_layer.parameters():
                p.grad = None
        self.optimizer.step()
        m = float(self.momentum[it])
        with torch.no_grad():  # EMA: teacher <- m * teacher + (1 - m) * student
            for p_s, p_t in zip(self.student.parameters(), self.teacher.parameters()):
                p_t.mul_(m).add_(p_s.detach(), alpha=1 - m)
        self.step_count += 1
        return {"loss": loss.item(), "lr": float(self.lr[it]), "momentum": m, "teacher_temp": float(self.teacher_temp[it])}

    def state_dict(self) -> dict:
        """DINO's training-checkpoint layout: 'student'/'teacher' hold backbone.* and head.* keys."""
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict(), "dino_loss": self.loss.state_dict(),
                "step": self.step_count, "config": self.cfg.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss.load_state_dict(state["dino_loss"])
        self.step_count = int(state["step"])
