#!/usr/bin/env python3
"""Per-stage and end-to-end frames/s of today's runtimes (OpenCV DNN detector, torch embedder) next to
`runtime: auto`, in one run; the per-frame overheads (decode, ZeroMQ hops, JSON, drawing); and the bound
the per-stage costs imply on this machine's cores.

    python benchmarks/bench_pipeline.py [--source VIDEO] [--frames N] [--config configs/default.yaml] [--pairs 2]

Stage costs are the fastest of alternating repeats (the minimum is the CPU, the rest is other processes on
a shared machine); pipelines alternate reference / auto runs; the load average is printed with each figure.
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
import yaml
import zmq

from models.compiled import build_detector, build_embedder
from models.runtimes import choices, cpu_model, version
from models.sddc import Gate
from models.tracks import BoxTracker, LabelVotes
from stages.config import load
from stages.detect import detect
from stages.embed import embed
from stages.gate import label
from stages.process import limit_threads
from stages.sink import records
from stages.supervisor import MODEL_MALLOC
from stream.messages import Frame
from stream.overlay import ClassBook, Overlay
from stream.wire import decode, encode

ROOT = Path(__file__).resolve().parents[1]

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def load_avg() -> str:
    return "load %.1f" % os.getloadavg()[0]


def read_frames(path: str, n: int) -> tuple[list[Frame], float]:
    """The frames and the decode cost (ms/frame)."""
    cap = cv2.VideoCapture(path)
    frames, t = [], time.perf_counter()
    while len(frames) < n:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(Frame(path, len(frames), time.time(), image))
    ms = 1000 * (time.perf_counter() - t) / max(len(frames), 1)
    cap.release()
    return frames, ms


def models(settings):
    d, e = settings.detect, settings.embed
    det = build_detector(d.model, d.runtime, d.threads, weights=d.weights, device=d.device, **d.options)
    emb = build_embedder(e.model, e.runtime, e.threads, weights=e.weights, device=e.device, **e.options)
    return det, emb


def stage_costs(settings, det, emb, frames):
    """ms per frame of the detect and embed steps, threads and batching as configured; the detections."""
    d, e = settings.detect, settings.embed
    limit_threads(d.threads)
    t, dets = time.perf_counter(), []
    for i in range(0, len(frames), d.batch_size):
        dets += detect(det, frames[i:i + d.batch_size], d.score_threshold, d.min_box, d.nms_iou)
    det_ms = 1000 * (time.perf_counter() - t) / len(frames)
    limit_threads(e.threads)
    t, embs = time.perf_counter(), []
    for i in range(0, len(dets), e.batch_frames):
        embs += embed(emb, dets[i:i + e.batch_frames])
    return det_ms, 1000 * (time.perf_counter() - t) / len(frames), dets, embs


def overheads(frames, dets, embs) -> dict[str, float]:
    """ms per frame outside the models: gate, ZeroMQ hops of the frame-carrying messages, JSON, drawing."""
    gate, tracker, votes = Gate.empty(), BoxTracker(), LabelVotes()
    t = time.perf_counter()
    labeled = [label(gate, m, tracker, votes)[0] for m in embs]
    out = {"gate (classify, track, vote)": 1000 * (time.perf_counter() - t) / len(embs)}
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory() as tmp:
        push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        pull.bind(f"ipc://{tmp}/hop")
        push.connect(f"ipc://{tmp}/hop")
        hops = 0.0
        for chain in (frames, dets, embs, labeled):
            t = time.perf_counter()
            for msg in chain:
                push.send_multipart(encode(msg), copy=False)
                decode(pull.recv_multipart(copy=False))
            hops += 1000 * (time.perf_counter() - t) / len(chain)
        push.close(0)
        pull.close(0)
    ctx.term()
    out["4 ZeroMQ hops (encode, ipc, decode)"] = hops
    t = time.perf_counter()
    for msg in labeled:
        for rec in records(msg, time.time()):
            json.dumps(rec)
    out["JSON event records"] = 1000 * (time.perf_counter() - t) / len(labeled)
    overlay, book = Overlay((labeled[0].image.shape[1], labeled[0].image.shape[0])), ClassBook()
    t = time.perf_counter()
    for msg in labeled:
        overlay.draw(msg, book, ["hud"])
    out["drawing (only with a window or --save)"] = 1000 * (time.perf_counter() - t) / len(labeled)
    return out


def pipeline(config: str, source: str, n: int, overrides: list[str]) -> tuple[float, dict]:
    """Steady-state frames/s (first to last frame record) and the runtimes the stages reported."""
    with tempfile.TemporaryDirectory() as tmp:
        events = os.path.join(tmp, "ev.jsonl")
        subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "--config", config, "--source", source,
                        "--headless", "--events", events, "--max-frames", str(n), *overrides], check=True,
                       stderr=subprocess.DEVNULL, cwd=ROOT)
        recs = [json.loads(line) for line in open(events)]
    ts = [r["ts"] for r in recs if r["type"] == "frame"]
    assert len(ts) == n, f"pipeline logged {len(ts)} frames, expected {n}"
    used = {r["stage"]: r.get("runtime") for r in recs if r["type"] == "stage_started" and r.get("runtime")}
    return (len(ts) - 1) / (ts[-1] - ts[0]), used


def main() -> None:
    if any(k not in os.environ for k in MODEL_MALLOC):  # measure the models as the stage processes run them:
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(MODEL_MALLOC, **os.environ))  # glibc reads these at start
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(VTEST))
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--pairs", type=int, default=2, help="reference/auto pipeline runs, alternating")
    p.add_argument("--also", nargs="*", default=[], metavar="KEY=VALUE",
                   help="a third variant: auto with these settings, e.g. detect.threads=2")
    args = p.parse_args()
    base = load(args.config)
    ref_set = {"detect.runtime": choices(base.detect.model)[0], "embed.runtime": choices(base.embed.model)[0]}
    variants = {"reference": load(args.config, ref_set), "auto": base}
    also = dict(kv.split("=", 1) for kv in args.also)
    if also:
        variants["auto " + " ".join(args.also)] = load(args.config, {k: yaml.safe_load(v) for k, v in also.items()})
    frames, decode_ms = read_frames(args.source, args.frames)
    cores = os.cpu_count()
    print(f"CPU {cpu_model()}, {cores} cores; {load_avg()}; openvino {version('openvino')}, onnxruntime "
          f"{version('onnxruntime')}, torch {version('torch')}, opencv {version('opencv')}")
    print(f"source {args.source}: {len(frames)} frames {frames[0].image.shape[1]}x{frames[0].image.shape[0]}; "
          f"detector {base.detect.model} (threads {base.detect.threads}), embedder {base.embed.model} "
          f"{base.embed.options} (threads {base.embed.threads})")
    built = {name: models(s) for name, s in variants.items()}
    for name, (det, emb) in built.items():
        print(f"  {name:9s}: detect on {det.runtime}, embed on {emb.runtime}")
    costs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(2):  # alternating; the first round also warms up
        for name, s in variants.items():
            det_ms, emb_ms, dets, embs = stage_costs(s, *built[name], frames)
            costs[name].append((det_ms, emb_ms))
    boxes = sum(len(m) for m in dets) / len(dets)
    other = overheads(frames, dets, embs)
    print(f"\nper frame, outside the models ({boxes:.1f} boxes/frame; {load_avg()}):")
    print(f"  {'decode':40s} {decode_ms:6.2f} ms")
    for what, ms in other.items():
        print(f"  {what:40s} {ms:6.2f} ms")
    fixed = decode_ms + sum(ms for what, ms in other.items() if not what.startswith("drawing"))
    print(f"\n{'':22s}{'detect':>16s}{'embed':>16s}{'bound':>14s}  (on {cores} cores; {load_avg()})")
    bounds = {}
    for name in variants:
        det_ms, emb_ms = (min(c[i] for c in costs[name]) for i in (0, 1))
        total = det_ms + emb_ms + fixed
        t_det, t_emb = variants[name].detect.threads or cores, variants[name].embed.threads or cores
        bounds[name] = min(cores * 1000 / total, 1000 * t_det / det_ms, 1000 * t_emb / emb_ms)
        print(f"  {name:20s}{det_ms:7.1f} ms {1000 / det_ms:5.1f}/s{emb_ms:7.1f} ms {1000 / emb_ms:5.1f}/s"
              f"{bounds[name]:9.2f} /s   (non-model share {fixed / total:.1%})")
        share = det_ms / (det_ms + emb_ms)
        print(f"  {'':20s}threads by cost on N cores: detect ~ {share:.2f} N, embed ~ {1 - share:.2f} N")
    print(f"\npipeline, 6 processes, steady state (alternating runs):")
    fps: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.pairs):
        for name, s in variants.items():
            extra = ref_set if name == "reference" else {} if name == "auto" else also
            sets = [f"--set={k}={v}" for k, v in extra.items()]
            load_before = load_avg()
            rate, used = pipeline(args.config, args.source, len(frames), sets)
            fps[name].append(rate)
            print(f"  {name:24s} {rate:6.2f} frames/s  ({load_before}; stages on {used})")
    best = {name: max(v) for name, v in fps.items()}
    print("\nbest runs: " + ", ".join(f"{name} / reference {best[name] / best['reference']:.2f}x"
                                     for name in variants if name != "reference"))
    print("pipeline / bound: " + ", ".join(f"{name} {best[name] / bounds[name]:.2f}" for name in variants))


if __name__ == "__main__":
    main()
