"""Crops/s of the DINO ViT-S/16 student vs timm's raw ViT-S/16 (same input), 224/112 px, fp32/bf16, one run.

Usage: .venv/bin/python benchmarks/bench_student.py [--crops 64] [--seconds 6] [--weights PATH]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import timm
import torch

from models.crops import crops_to_batch
from models.precision import autocast, cpu_bf16
from models.student import IMAGENET_MEAN, IMAGENET_STD, Student, cache_dir, dino_pos_embed


def timed(fns: list, n_items: int, seconds: float) -> list[float]:
    """Items/s of each fn: median over repeats (at least 3) after one warm-up call each. The fns are called in turn
    (round-robin) for at least `seconds`, so load from other processes hits all of them alike."""
    for fn in fns:
        fn()
    times, start = [[] for _ in fns], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times[0]) < 3:
        for fn, fn_times in zip(fns, times):
            t = time.perf_counter()
            fn()
            fn_times.append(time.perf_counter() - t)
    return [n_items / statistics.median(t) for t in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=32, help="crops per batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum timing per input size")
    parser.add_argument("--weights", default=None, help="DINO S/16 checkpoint; default: cached official or random")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    weights = args.weights or cache_dir() / "dino_deitsmall16_pretrain.pth"
    official = Path(weights).is_file()
    rng = np.random.default_rng(0)
    sizes = rng.integers(40, 200, (args.crops, 2))  # stream-like object crops, various aspect ratios
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]

    print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
          f"cpu bf16: {cpu_bf16()}, load avg {os.getloadavg()[0]:.2f}")
    print(f"weights: {weights if official else 'RANDOM (no official S/16 file cached; speed does not depend on them)'}")
    print(f"batch of {args.crops} BGR crops 40-200 px; crops/s (higher is better)\n")
    print(f"{'size':>5} {'prec':>5} | {'owd embed()':>12} {'owd features':>13} {'timm forward':>13} | features/timm")
    for size in (224, 112):
        ours = (Student.from_checkpoint(weights, input_size=size) if official else Student(input_size=size)).eval()
        raw = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=size).eval()
        state = ours.state_dict()
        # timm built at `size` holds a native grid, so its plain forward resamples nothing; give it our
        # resampled values so both compute the same function.
        state["pos_embed"] = dino_pos_embed(state["pos_embed"], size, size, 16)
        raw.load_state_dict(state, strict=True)
        x = crops_to_batch(crops, size, IMAGENET_MEAN, IMAGENET_STD)  # (B, 3, size, size)

        def embed(precision):
            ours.precision = precision
            ours.embed(crops)

        def forward(model, precision):
            with torch.inference_mode(), autocast("cpu", precision):
                model.features(x) if model is ours else model(x)

        fns = [f for p in ("fp32", "bf16") for f in (partial(embed, p), partial(forward, ours, p),
                                                       partial(forward, raw, p))]
        rates = timed(fns, len(crops), args.seconds)  # all six interleaved: fp32 vs bf16 is fair too
        for i, precision in enumerate(("fp32", "bf16")):
            e, f, t = rates[3 * i:3 * i + 3]
            print(f"{size:>5} {precision:>5} | {e:>12.1f} {f:>13.1f} {t:>13.1f} | {f / t:>8.2f}x", flush=True)
    print(f"\nload avg at the end {os.getloadavg()[0]:.2f} (other processes share these cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
