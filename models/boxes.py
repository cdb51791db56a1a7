"""Box crops of a frame, for the embedder and as example crops that embed like them (numpy and OpenCV only)."""
from __future__ import annotations

import cv2
import numpy as np


def crop(image: np.ndarray, xyxy: np.ndarray) -> list[np.ndarray]:
    """Box crops (views), boxes rounded outward and clipped to the image; at least 1x1."""
    h, w = image.shape[:2]
    out = []
    for x1, y1, x2, y2 in xyxy:
        x1, y1 = min(max(int(np.floor(x1)), 0), w - 1), min(max(int(np.floor(y1)), 0), h - 1)
        x2, y2 = max(min(int(np.ceil(x2)), w), x1 + 1), max(min(int(np.ceil(y2)), h), y1 + 1)
        out.append(image[y1:y2, x1:x2])
    return out


def example(image: np.ndarray, size: int) -> np.ndarray:
    """The example crop saved for a box: each side longer than `size` is scaled down to `size`, the
    other kept, with the interpolation the embedders use (models/crops.py). An embedder stretches a
    crop to its square input side by side, so with `size` = that input an example embeds as the live
    box did (exactly when the box fits; one side may look squeezed to a person, a price worth paying
    for a gallery that matches live boxes)."""
    h, w = image.shape[:2]
    if h <= size and w <= size:
        return np.ascontiguousarray(image)
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (min(w, size), min(h, size)), interpolation=interp)


def pack(examples: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Examples of at most size x size -> one (N, size, size, 3) uint8 array (each in its slot's top
    left corner) and their (N, 2) int32 heights and widths, for the wire."""
    slots = np.zeros((len(examples), size, size, 3), np.uint8)
    hw = np.zeros((len(examples), 2), np.int32)
    for i, ex in enumerate(examples):
        slots[i, :ex.shape[0], :ex.shape[1]] = ex
        hw[i] = ex.shape[:2]
    return slots, hw
