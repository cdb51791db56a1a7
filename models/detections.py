"""What a detector returns for one image: boxes, scores and class ids as numpy columns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Detections:
    xyxy: np.ndarray       # (N, 4) float32, absolute pixels of the input frame
    scores: np.ndarray     # (N,) float32 in [0, 1]
    class_ids: np.ndarray  # (N,) int64, index into the detector's class_names

    def __post_init__(self):
        n = len(self.scores)
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"xyxy has shape {self.xyxy.shape}, expected ({n}, 4)")
        if self.scores.shape != (n,) or self.class_ids.shape != (n,):
            raise ValueError(f"scores {self.scores.shape} and class_ids {self.class_ids.shape} must be ({n},)")

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index) -> "Detections":
        """Boolean mask or integer index array; always returns Detections."""
        index = np.atleast_1d(np.asarray(index)) if not isinstance(index, slice) else index
        return Detections(self.xyxy[index], self.scores[index], self.class_ids[index])


class Detector(Protocol):
    class_names: tuple[str, ...]

    def detect(self, frames: list[np.ndarray]) -> list[Detections]:
        """frames: BGR uint8 (H, W, 3) images, any sizes; one Detections per frame, sorted by score."""


class Embedder(Protocol):
    dim: int

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """crops: BGR uint8 (h, w, 3) images; returns (len(crops), dim) float32."""
