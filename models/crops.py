"""Turns BGR crops of any size into one normalized RGB batch tensor for an embedder."""
from __future__ import annotations

import cv2
import numpy as np
import torch


def crops_to_batch(crops: list[np.ndarray], size: int, mean, std) -> torch.Tensor:
    """Resize each BGR uint8 crop to size x size (aspect not kept: an object box is what is
    embedded, padding would add background), convert to RGB and normalize as (x - mean) / std
    with mean/std in 0-255 units. Returns (B, 3, size, size) float32."""
    batch = np.empty((len(crops), size, size, 3), np.float32)
    for i, crop in enumerate(crops):
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] == 0 or crop.shape[1] == 0:
            raise ValueError(f"crop {i} has shape {crop.shape}, expected (h>0, w>0, 3)")
        interp = cv2.INTER_AREA if min(crop.shape[:2]) > size else cv2.INTER_LINEAR
        batch[i] = cv2.resize(crop, (size, size), interpolation=interp)[:, :, ::-1]
    batch -= np.asarray(mean, np.float32)
    batch /= np.asarray(std, np.float32)
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)
