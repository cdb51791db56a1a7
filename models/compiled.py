"""Registered models on a chosen runtime: builds the reference model, exports its network once and wraps the session."""
from __future__ import annotations

import os

import cv2
import numpy as np

from models.crops import crops_to_batch
from models.detections import Detections
from models.registry import DETECTORS, EMBEDDERS, ModelError
from models.runtimes import (cache_dir, cached_choice, check, choices, choose, export_onnx, file_digest,
                             installed, open_session, tensors_digest)
from models.ssd_mobilenet import rows_to_detections

_SAMPLE_CROPS = [(90, 40), (120, 50), (60, 30), (150, 70)] * 4  # (h, w) of people-sized crops: auto's test batch


def installed_choices(name: str) -> list[str]:
    return [rt for rt in choices(name) if installed(rt)]


class RuntimeEmbedder:
    """An embedder's network (B, 3, S, S) -> (B, dim) on OpenVINO or ONNX Runtime; the same crops,
    resize and normalisation as the torch model it was exported from."""

    def __init__(self, model, session, runtime: str):
        self.model, self.session, self.runtime = model, session, runtime
        self.dim, self.input_size, self.batch_size = model.dim, model.input_size, model.batch_size

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(crops), self.dim), np.float32)
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start:start + self.batch_size]
            batch = crops_to_batch(chunk, self.input_size, self.model.mean, self.model.std).numpy()
            out[start:start + len(chunk)] = self.session(batch)[0]
        return out


def build_embedder(name: str, runtime: str = "auto", threads: int = 0, device: str = "cpu", **kw):
    """EMBEDDERS.create(name, ...) run on `runtime`; auto measures the installed ones once (cached)."""
    check(name, runtime, device)
    model = EMBEDDERS.create(name, device=device, **kw)
    model.runtime = "torch"
    if runtime == "torch" or (runtime == "auto" and device != "cpu"):
        return model
    import torch

    size = model.input_size
    onnx = export_onnx(model.network(), (torch.zeros(2, 3, size, size),),
                       cache_dir() / f"{name}-{tensors_digest(model.network())}-{size}.onnx",
                       {"x": {0: "batch"}, "y": {0: "batch"}})
    key = f"{name} {onnx.stem} threads={threads}"
    runtime = runtime if runtime != "auto" else cached_choice(key, installed_choices(name)) or "auto"
    if runtime == "torch":
        return model
    if runtime != "auto":
        return RuntimeEmbedder(model, open_session(runtime, onnx, threads), runtime)
    built = {"torch": model}
    for rt in installed_choices(name)[1:]:
        built[rt] = RuntimeEmbedder(model, open_session(rt, onnx, threads), rt)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in _SAMPLE_CROPS]
    return built[choose(key, {rt: (lambda m=m: m.embed(crops)) for rt, m in built.items()})]


class OpenVINOSSD:
    """The SSD-MobileNetV2 TF graph read by OpenVINO (converted once into the cache as OpenVINO IR).
    Frames are resized to input_size as OpenCV's blobFromImages does (bilinear), RGB uint8."""

    def __init__(self, reference, threads: int):
        import openvino as ov

        self.class_names, self.input_size = reference.class_names, reference.input_size
        self.score_threshold, self.runtime = reference.score_threshold, "openvino"
        ir = cache_dir() / f"ssd_mobilenet_v2-{file_digest(reference.graph)}-{self.input_size}.xml"
        if not ir.is_file():  # reading the TF graph takes ~1 min; the IR ~1 s
            network = ov.Core().read_model(str(reference.graph))
            network.reshape({network.inputs[0]: [-1, self.input_size, self.input_size, 3]})
            ir.parent.mkdir(parents=True, exist_ok=True)
            tmp = ir.with_name(f".{ir.stem}.{os.getpid()}.xml")
            ov.save_model(network, str(tmp))
            os.replace(tmp.with_suffix(".bin"), ir.with_suffix(".bin"))
            os.replace(tmp, ir)
        self.session = open_session("openvino", ir, threads)

    def detect(self, frames: list[np.ndarray]) -> list[Detections]:
        s, out = self.input_size, []
        for frame in frames:  # one at a time: batches of 4 were 10 % slower per frame (1 thread)
            x = cv2.resize(frame, (s, s), interpolation=cv2.INTER_LINEAR)[None, :, :, ::-1]  # (1, S, S, 3) RGB
            boxes, classes, scores, _ = self.session(x)  # (1, 100, 4) y1 x1 y2 x2 normalized, (1, 100) x2
            k = scores.shape[1]
            rows = np.concatenate([np.zeros((k, 1), np.float32), classes.reshape(-1, 1), scores.reshape(-1, 1),
                                   boxes.reshape(-1, 4)[:, [1, 0, 3, 2]]], axis=1)
            out += rows_to_detections(rows.astype(np.float32), [frame], self.score_threshold)
        return out


class RuntimeBackbone:
    """DiffusionDet's ResNet-FPN on OpenVINO or ONNX Runtime; the head (box sampling) stays in torch."""

    def __init__(self, session):
        self.session = session

    def __call__(self, batch):
        import torch
        return [torch.from_numpy(f) for f in self.session(batch.contiguous().numpy())]


def build_detector(name: str, runtime: str = "auto", threads: int = 0, device: str = "cpu", **kw):
    """DETECTORS.create(name, ...) run on `runtime`; auto measures the installed ones once (cached)."""
    check(name, runtime, device)
    reference = DETECTORS.create(name, device=device, **kw)
    ref_runtime = reference.runtime = choices(name)[0]
    if runtime == ref_runtime or (runtime == "auto" and device != "cpu"):
        return reference
    if name.startswith("ssd_"):
        make = lambda rt: OpenVINOSSD(reference, threads)  # noqa: E731
        key = f"{name} {file_digest(reference.graph)} size={reference.input_size} threads={threads}"
    else:
        make, key = _diffusiondet_backbone(name, reference, threads)
    runtime = runtime if runtime != "auto" else cached_choice(key, installed_choices(name)) or "auto"
    if runtime == ref_runtime:
        return reference
    if runtime != "auto":
        return make(runtime)
    built = {ref_runtime: reference}
    for rt in installed_choices(name)[1:]:
        built[rt] = make(rt)
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    return built[choose(key, {rt: (lambda m=m: m.detect([frame])) for rt, m in built.items()})]


def _diffusiondet_backbone(name: str, reference, threads: int):
    """make(runtime) -> a DiffusionDet sharing the reference's head, its backbone on runtime."""
    import copy

    import torch

    from models.resnet_fpn import ResNetFPN
    d = ResNetFPN.size_divisibility
    onnx = export_onnx(reference.backbone, (torch.zeros(1, 3, 2 * d, 3 * d),),
                       cache_dir() / f"{name}-backbone-{tensors_digest(reference.backbone)}.onnx",
                       {"x": {0: "batch", 2: "height", 3: "width"}})

    def make(rt: str):
        model = copy.copy(reference)  # shallow: the head's weights are shared
        object.__setattr__(model, "backbone", RuntimeBackbone(open_session(rt, onnx, threads)))
        model.runtime = rt
        return model
    if reference.precision == "bf16":
        raise ModelError(f"{name}: precision bf16 runs on torch only; set runtime: torch")
    return make, f"{name} {onnx.stem} threads={threads}"


def main() -> None:
    """Fill the cache before the first run (`make` does): exports, conversions and auto's measurements."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--detector", default="ssd_mobilenet_v2")
    p.add_argument("--embedder", default="efficientnet_lite0")
    p.add_argument("--input-size", type=int, default=128, help="embedder input size (px)")
    p.add_argument("--threads", type=int, default=1, help="threads per model, as the stages run them")
    args = p.parse_args()
    detector = build_detector(args.detector, "auto", args.threads)
    embedder = build_embedder(args.embedder, "auto", args.threads, input_size=args.input_size)
    print(f"{args.detector}: {detector.runtime}; {args.embedder} @ {args.input_size} px: {embedder.runtime} "
          f"(cache {cache_dir()})")


if __name__ == "__main__":
    main()
