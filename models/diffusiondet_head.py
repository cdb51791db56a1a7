"""DiffusionDet's dynamic head: RoI pooling over FPN levels and a cascade of time-conditioned RCNN stages."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

SCALE_CLAMP = math.log(100000.0 / 16)  # largest dw, dh before exp(), as detectron2's Box2BoxTransform
BOX_WEIGHTS = (2.0, 2.0, 1.0, 1.0)     # (wx, wy, ww, wh) dividing the predicted deltas


@dataclass(frozen=True)
class HeadConfig:
    num_classes: int = 80
    hidden_dim: int = 256
    dim_feedforward: int = 2048
    num_attn_heads: int = 8
    num_stages: int = 6
    dim_dynamic: int = 64
    num_dynamic: int = 2
    pooler_resolution: int = 7
    num_cls: int = 1
    num_reg: int = 3
    strides: tuple[int, ...] = (4, 8, 16, 32)  # of the feature maps p2..p5


def assign_fpn_levels(boxes: torch.Tensor, min_level: int = 2, max_level: int = 5) -> torch.Tensor:
    """FPN paper's eq. 1 as in detectron2: boxes (M, 4) xyxy input pixels -> (M,) int64 level offsets from
    min_level. A degenerate box (negative area gives NaN) maps outside [0, max-min] and pools to zeros."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))  # (M,)
    levels = torch.floor(4 + torch.log2(sizes / 224 + 1e-8))
    return torch.clamp(levels, min=min_level, max=max_level).to(torch.int64) - min_level


def pool_rois(features: list[torch.Tensor], boxes: torch.Tensor, strides: tuple[int, ...],
              resolution: int) -> torch.Tensor:
    """features: [(B, C, H_l, W_l)] p2..p5; boxes: (B, P, 4) xyxy input pixels -> (B*P, C, R, R), each box
    pooled from its level with ROIAlignV2 (sampling ratio 2, half-pixel aligned)."""
    b, p = boxes.shape[:2]
    flat = boxes.reshape(b * p, 4)                                        # (M, 4)
    batch_idx = torch.arange(b, device=boxes.device, dtype=flat.dtype).repeat_interleave(p)
    # detectron2 casts the rois to the feature dtype; under bf16 autocast roi_align runs in fp32 anyway,
    # so keep the rois fp32 there instead of rounding box coordinates to bf16.
    rois = torch.cat([batch_idx[:, None], flat], dim=1).float()            # (M, 5)
    levels = assign_fpn_levels(flat)                                      # (M,)
    out = features[0].new_zeros((b * p, features[0].shape[1], resolution, resolution))
    for level, (feat, stride) in enumerate(zip(features, strides)):
        inds = torch.nonzero(levels == level).squeeze(1)
        if len(inds):
            out[inds] = roi_align(feat, rois[inds], resolution, 1.0 / stride, 2, True).to(out.dtype)
    return out


def apply_deltas(deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """deltas (M, 4) (dx, dy, dw, dh) scaled by BOX_WEIGHTS; boxes (M, 4) xyxy -> (M, 4) xyxy in deltas' dtype."""
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = BOX_WEIGHTS
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=SCALE_CLAMP)
    dh = torch.clamp(deltas[:, 3] / wh, max=SCALE_CLAMP)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack([pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                        pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h], dim=1)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t (B,) diffusion steps -> (B, dim): [sin | cos] of t at geometric frequencies 1 .. 1/10000."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))  # (half,)
    args = t[:, None] * freqs[None, :]                                                      # (B, half)
    return torch.cat((args.sin(), args.cos()), dim=-1)


class DynamicConv(nn.Module):
    """Per-proposal 1x1 convs whose kernels are generated from the proposal feature (Sparse R-CNN)."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        d, dd = cfg.hidden_dim, cfg.dim_dynamic
        self.num_params = d * dd
        self.dynamic_layer = nn.Linear(d, cfg.num_dynamic * self.num_params)
        self.norm1 = nn.LayerNorm(dd)
        self.norm2 = nn.LayerNorm(d)
        self.out_layer = nn.Linear(d * cfg.pooler_resolution ** 2, d)
        self.norm3 = nn.LayerNorm(d)

    def forward(self, pro: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        """pro (M, D), roi (M, R*R, D) -> (M, D)."""
        m, d = pro.shape
        params = self.dynamic_layer(pro)                                 # (M, 2*D*dd)
        param1 = params[:, :self.num_params].view(m, d, -1)              # (M, D, dd)
        param2 = params[:, self.num_params:].view(m, -1, d)              # (M, dd, D)
        x = F.relu(self.norm1(torch.bmm(roi, param1)))                   # (M, R*R, dd)
        x = F.relu(self.norm2(torch.bmm(x, param2)))                     # (M, R*R, D)
        return F.relu(self.norm3(self.out_layer(x.flatten(1))))          # (M, D)


class RCNNHead(nn.Module):
    """One refinement stage: self-attention among proposals, dynamic conv with RoI features, FFN, time
    scale/shift, then class logits and box deltas."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.cfg = cfg
        self.self_attn = nn.MultiheadAttention(d, cfg.num_attn_heads, batch_first=True)
        self.inst_interact = DynamicConv(cfg)
        self.linear1 = nn.Linear(d, cfg.dim_feedforward)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.block_time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(4 * d, 2 * d))
        self.cls_module = nn.ModuleList(
            [m for _ in range(cfg.num_cls) for m in (nn.Linear(d, d, bias=False), nn.LayerNorm(d), nn.ReLU())])
        self.reg_module = nn.ModuleList(
            [m for _ in range(cfg.num_reg) for m in (nn.Linear(d, d, bias=False), nn.LayerNorm(d), nn.ReLU())])
        self.class_logits = nn.Linear(d, cfg.num_classes)
        self.bboxes_delta = nn.Linear(d, 4)

    def forward(self, features: list[torch.Tensor], boxes: torch.Tensor, pro: torch.Tensor | None,
                time_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """boxes (B, P, 4) xyxy; pro (B, P, D) or None on the first stage; time_emb (B, 4D)
        -> logits (B, P, K), boxes (B, P, 4) fp32, proposal features (B, P, D)."""
        b, p = boxes.shape[:2]
        d = self.cfg.hidden_dim
        roi = pool_rois(features, boxes, self.cfg.strides, self.cfg.pooler_resolution)  # (B*P, D, R, R)
        if pro is None:
            pro = roi.view(b, p, d, -1).mean(-1)                          # (B, P, D)
        roi = roi.view(b * p, d, -1).permute(0, 2, 1)                     # (B*P, R*R, D)

        pro = self.norm1(pro + self.self_attn(pro, pro, pro, need_weights=False)[0])  # (B, P, D)
        pro = pro.reshape(b * p, d)                                       # (B*P, D)
        obj = self.norm2(pro + self.inst_interact(pro, roi))              # (B*P, D)
        obj = self.norm3(obj + self.linear2(F.relu(self.linear1(obj))))  # (B*P, D)

        scale, shift = self.block_time_mlp(time_emb).repeat_interleave(p, dim=0).chunk(2, dim=1)  # (B*P, D)
        fc = obj * (scale + 1) + shift                                    # (B*P, D)
        cls, reg = fc, fc
        for layer in self.cls_module:
            cls = layer(cls)
        for layer in self.reg_module:
            reg = layer(reg)
        # The last two linears run in fp32 so bf16 autocast never rounds box coordinates.
        with torch.autocast(fc.device.type, enabled=False):
            logits = self.class_logits(cls.float())                       # (B*P, K)
            deltas = self.bboxes_delta(reg.float())                       # (B*P, 4)
        pred = apply_deltas(deltas, boxes.reshape(b * p, 4))              # (B*P, 4)
        return logits.view(b, p, -1), pred.view(b, p, 4), obj.view(b, p, d)


class DynamicHead(nn.Module):
    """Time MLP plus `num_stages` RCNNHeads; each stage refines the previous stage's (detached) boxes."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.cfg = cfg
        # Index 0 is the parameter-free sinusoidal embedding, kept so the keys read time_mlp.1 / time_mlp.3.
        self.time_mlp = nn.Sequential(nn.Identity(), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, 4 * d))
        self.head_series = nn.ModuleList([RCNNHead(cfg) for _ in range(cfg.num_stages)])

    def forward(self, features: list[torch.Tensor], boxes: torch.Tensor, t: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """features p2..p5; boxes (B, P, 4) xyxy input pixels; t (B,) int64 -> last stage's
        logits (B, P, K) and boxes (B, P, 4)."""
        time_emb = self.time_mlp(sinusoidal_embedding(t, self.cfg.hidden_dim))  # (B, 4D)
        pro = None
        for stage in self.head_series:
            logits, boxes_out, pro = stage(features, boxes, pro, time_emb)
            boxes = boxes_out.detach()
        return logits, boxes_out
