"""ResNet with frozen batch norm and an FPN on top, laid out with detectron2's module and key names."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Blocks per stage res2..res5 for each depth (detectron2's `build_resnet_backbone`).
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


@dataclass(frozen=True)
class BackboneConfig:
    blocks: tuple[int, int, int, int] = RESNET_BLOCKS[50]
    stem_channels: int = 64       # stem output; res2's bottleneck width
    res2_out_channels: int = 256  # doubles every stage, as do bottleneck widths
    fpn_channels: int = 256


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all stored as buffers (never trained)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
        shift = self.bias - self.running_mean * scale                 # (C,)
        # Stay in the conv's dtype so bf16 autocast does not bounce through fp32 between convs.
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)


class ConvNorm(nn.Conv2d):
    """A bias-free conv followed by its frozen norm, stored as `<name>.weight` and `<name>.norm.*`."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1):
        super().__init__(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.norm = FrozenBatchNorm2d(c_out)
        self.folded: tuple[torch.Tensor, torch.Tensor] | None = None

    def fold(self) -> None:
        """Fold the frozen norm into the conv for inference (one conv with bias instead of conv, mul, add).
        The state dict keeps the unfolded weights; call again after loading new ones."""
        scale = self.norm.weight * (self.norm.running_var + self.norm.eps).rsqrt()  # (C,)
        shift = self.norm.bias - self.norm.running_mean * scale                      # (C,)
        self.folded = (self.weight * scale.view(-1, 1, 1, 1), shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded is not None:
            return self._conv_forward(x, *self.folded)
        return self.norm(super().forward(x))


class BasicStem(nn.Module):
    def __init__(self, c_out: int):
        super().__init__()
        self.conv1 = ConvNorm(3, c_out, 7, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))                                # (B, C, H/2, W/2)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # (B, C, H/4, W/4)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, torchvision style) -> 1x1, plus a projected shortcut when shapes change."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, stride: int):
        super().__init__()
        if c_in != c_out:
            self.shortcut = ConvNorm(c_in, c_out, 1, stride=stride)
        self.conv1 = ConvNorm(c_in, c_mid, 1)
        self.conv2 = ConvNorm(c_mid, c_mid, 3, stride=stride)
        self.conv3 = ConvNorm(c_mid, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x) if hasattr(self, "shortcut") else x
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        return F.relu_(self.conv3(out).add_(shortcut))


class ResNet(nn.Module):
    """Returns res2..res5 at strides 4, 8, 16, 32."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.stem = BasicStem(cfg.stem_channels)
        c_in, c_mid, c_out = cfg.stem_channels, cfg.stem_channels, cfg.res2_out_channels
        self.stage_names = ("res2", "res3", "res4", "res5")
        self.out_channels = []
        for i, (name, n_blocks) in enumerate(zip(self.stage_names, cfg.blocks)):
            first_stride = 1 if i == 0 else 2
            blocks = [Bottleneck(c_in if b == 0 else c_out, c_mid, c_out, first_stride if b == 0 else 1)
                      for b in range(n_blocks)]
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels.append(c_out)
            c_in, c_mid, c_out = c_out, c_mid * 2, c_out * 2

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)  # (B, C_i, H/2^(i+2), W/2^(i+2))
            outs.append(x)
        return outs


class ResNetFPN(nn.Module):
    """FPN (sum fusion, nearest 2x upsampling) over res2..res5, returning p2..p5; the pooled p6 is unused
    by DiffusionDet's head, so it is not computed. The input must be padded to a multiple of 32."""

    size_divisibility = 32
    strides = (4, 8, 16, 32)

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.bottom_up = ResNet(cfg)
        for level, c_in in zip((2, 3, 4, 5), self.bottom_up.out_channels):
            self.add_module(f"fpn_lateral{level}", nn.Conv2d(c_in, cfg.fpn_channels, 1))
            self.add_module(f"fpn_output{level}", nn.Conv2d(cfg.fpn_channels, cfg.fpn_channels, 3, padding=1))

    def fold_norms(self) -> None:
        for m in self.modules():
            if isinstance(m, ConvNorm):
                m.fold()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        res = self.bottom_up(x)
        prev = self.fpn_lateral5(res[3])    # (B, D, H/32, W/32)
        outs = [self.fpn_output5(prev)]
        for level in (4, 3, 2):
            lateral = getattr(self, f"fpn_lateral{level}")(res[level - 2])
            prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")  # (B, D, H/2^l, W/2^l)
            outs.insert(0, getattr(self, f"fpn_output{level}")(prev))
        return outs  # [p2, p3, p4, p5]
