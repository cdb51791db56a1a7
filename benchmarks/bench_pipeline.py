#!/usr/bin/env python3
"""End-to-end frames/s of the multi-process pipeline next to each model stage alone and a one-process loop.

    python benchmarks/bench_pipeline.py [--source VIDEO] [--frames N] [--config configs/default.yaml]

All three use the same models and settings (config file), the same frames, on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.registry import DETECTORS, EMBEDDERS  # noqa: E402
from models.sddc import Gate, normalize  # noqa: E402
from stages.config import load  # noqa: E402
from stages.detect import detect  # noqa: E402
from stages.embed import embed  # noqa: E402
from stages.gate import label  # noqa: E402
from stream.messages import Frame  # noqa: E402

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def read_frames(path: str, n: int) -> list[Frame]:
    cap = cv2.VideoCapture(path)
    frames = []
    while len(frames) < n:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(Frame(path, len(frames), time.time(), image))
    cap.release()
    return frames


def stage_alone(settings, frames: list[Frame]) -> tuple[float, float, int]:
    """(detect fps, embed fps, boxes): each model stage's step on its own, threads and batching as configured."""
    d, e = settings.detect, settings.embed
    torch.set_num_threads(d.threads or os.cpu_count())
    cv2.setNumThreads(d.threads or os.cpu_count())
    det = DETECTORS.create(d.model, weights=d.weights, device=d.device, **d.options)
    emb = EMBEDDERS.create(e.model, weights=e.weights, device=e.device, **e.options)
    detect(det, frames[:d.batch_size], d.score_threshold, d.min_box)  # warm-up
    t = time.perf_counter()
    dets = []
    for i in range(0, len(frames), d.batch_size):
        dets += detect(det, frames[i:i + d.batch_size], d.score_threshold, d.min_box)
    det_fps = len(frames) / (time.perf_counter() - t)
    torch.set_num_threads(e.threads or os.cpu_count())
    embed(emb, dets[:e.batch_frames])
    t = time.perf_counter()
    for i in range(0, len(dets), e.batch_frames):
        embed(emb, dets[i:i + e.batch_frames])
    emb_fps = len(frames) / (time.perf_counter() - t)
    return det_fps, emb_fps, sum(len(x) for x in dets)


def single_process(settings, frames: list[Frame]) -> float:
    """The same models in one loop, one frame at a time, all cores to each call."""
    d, e = settings.detect, settings.embed
    torch.set_num_threads(os.cpu_count())
    cv2.setNumThreads(os.cpu_count())
    det = DETECTORS.create(d.model, weights=d.weights, device=d.device, **d.options)
    emb = EMBEDDERS.create(e.model, weights=e.weights, device=e.device, **e.options)
    gate = Gate.empty()
    embed(emb, detect(det, frames[:1], d.score_threshold, d.min_box))
    t = time.perf_counter()
    for frame in frames:
        for msg in embed(emb, detect(det, [frame], d.score_threshold, d.min_box)):
            label(gate, msg)
    return len(frames) / (time.perf_counter() - t)


def pipeline(config: str, source: str, n: int) -> tuple[float, float]:
    """(steady-state fps from first to last frame record, fps over the whole run including start-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        events = os.path.join(tmp, "ev.jsonl")
        t = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "--config", config, "--source", source,
                        "--headless", "--events", events, "--max-frames", str(n)], check=True,
                       stderr=subprocess.DEVNULL, cwd=ROOT)
        wall = time.perf_counter() - t
        ts = [r["ts"] for r in map(json.loads, open(events)) if r["type"] == "frame"]
    assert len(ts) == n, f"pipeline logged {len(ts)} frames, expected {n}"
    return (len(ts) - 1) / (ts[-1] - ts[0]), n / wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(VTEST))
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    args = p.parse_args()
    settings = load(args.config)
    frames = read_frames(args.source, args.frames)
    print(f"source {args.source}: {len(frames)} frames {frames[0].image.shape[1]}x{frames[0].image.shape[0]}; "
          f"{os.cpu_count()} cores; detector {settings.detect.model}, embedder {settings.embed.model} "
          f"{settings.embed.options}")
    det_fps, emb_fps, boxes = stage_alone(settings, frames)
    print(f"{'detect stage alone':34s} {det_fps:6.2f} frames/s  (threads={settings.detect.threads}, "
          f"batch={settings.detect.batch_size})")
    print(f"{'embed stage alone':34s} {emb_fps:6.2f} frames/s  ({boxes / len(frames):.1f} boxes/frame, "
          f"threads={settings.embed.threads})")
    print(f"{'single-process loop, all cores':34s} {single_process(settings, frames):6.2f} frames/s")
    steady, overall = pipeline(args.config, args.source, len(frames))
    print(f"{'pipeline, 6 processes (steady)':34s} {steady:6.2f} frames/s  "
          f"(slowest stage alone: {min(det_fps, emb_fps):.2f})")
    print(f"{'pipeline incl. start-up':34s} {overall:6.2f} frames/s")


if __name__ == "__main__":
    main()
