#!/usr/bin/env python3
"""Replays a video's detections and embeddings through the gate, tracker and clustering to tune cluster settings.

    python benchmarks/replay_clustering.py [--source vtest.avi] [--cache out/replay.npz]
           [--set resolution=0.5,1.0 --set k=10,15 ...]

Detections and embeddings are computed once with the config's models (cached), then every combination
of the given ClusterSettings values is replayed with clustering every --period frames, as the cluster
stage would. Printed per combination: classes found, the share of each detector class's boxes labelled
with some class over the second half of the video, purity (per found class, the share of its boxes
that carry its majority detector class, mean over classes; also with car and truck as one class, since
the detector flips between them on one parked van) and the detector classes of each class's boxes. The detector's COCO class is only used to score, never by the clustering.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from models.discovery import DiscoveryRules, discover
from models.unseen import UnseenBuffer
from models.openworld import TrackAges
from models.registry import DETECTORS, EMBEDDERS
from models.sddc import UNSEEN, Gate
from models.tracks import BoxTracker, LabelVotes
from stages.config import ClusterSettings, load
from stages.detect import Proposals, detect
from stages.embed import embed
from stages.gate import label
from stream.messages import Frame, FrameEmbeddings

ROOT = Path(__file__).resolve().parents[1]

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


def compute(settings, source: str, cache: Path, max_frames: int = 0) -> None:
    d, e = settings.detect, settings.embed
    det = DETECTORS.create(d.model, weights=d.weights, device=d.device, **d.options)
    proposals = None
    if d.proposals:  # the detect stage's class-agnostic proposals, as in a run
        proposals = Proposals(d.proposal_score, d.proposal_iou, d.max_proposals, d.motion, d.motion_history, d.min_box)
        det.score_threshold = min(getattr(det, "score_threshold", 0.0), d.proposal_score)
    emb = EMBEDDERS.create(e.model, weights=e.weights, device=e.device, **e.options)
    cap = cv2.VideoCapture(source)
    rows = []
    while not max_frames or len(rows) < max_frames:
        ok, image = cap.read()
        if not ok or max_frames and len(rows) >= max_frames:
            break
        rows.append(embed(emb, detect(det, [Frame(source, len(rows), 0.0, image)], d.score_threshold, d.min_box,
                                      d.nms_iou, proposals))[0])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, n=np.array([len(m) for m in rows]), xyxy=np.concatenate([m.xyxy for m in rows]),
             scores=np.concatenate([m.scores for m in rows]), labels=np.array([x for m in rows for x in m.det_labels]),
             emb=np.concatenate([m.embeddings for m in rows]), shape=np.array(rows[0].image.shape),
             origins=np.array([o for m in rows for o in m.origins]))


def replay(data, s: ClusterSettings, alpha: float, period: int, persist: int = 5, pool: float = 0.0,
           steady: int = 0, source: str | None = None) -> tuple[int, dict[str, float], tuple[float, float], str]:
    """The cached boxes of each frame through the gate, with the source's frames read again when it opens (the
    gate's ghost test looks at the pixels under motion boxes; the embeddings come from the cache)."""
    n, offsets = data["n"], np.concatenate([[0], np.cumsum(data["n"])])
    blank = np.zeros(tuple(data["shape"]), np.uint8)
    cap = cv2.VideoCapture(source) if source else None
    gate, tracker, votes, ages = Gate.empty(), BoxTracker(), LabelVotes(), TrackAges()
    gate.pool = pool
    origins = data.get("origins", np.full(int(n.sum()), "detector"))  # caches from before proposals: detector only
    buffer = UnseenBuffer(s.buffer_size, s.per_track)
    rules = DiscoveryRules.from_settings(s)
    late = []  # (label, detector class) over the second half
    for f in range(len(n)):
        a, b = offsets[f], offsets[f + 1]
        ok, image = cap.read() if cap is not None else (False, None)  # an unopened capture reads nothing too
        frame = Frame("replay", f, 0.0, image if ok and image.shape == blank.shape else blank)
        msg = FrameEmbeddings(frame, data["xyxy"][a:b], data["scores"][a:b], tuple(data["labels"][a:b]),
                              data["emb"][a:b], origins=tuple(origins[a:b]))
        labeled, unseen = label(gate, msg, tracker, votes, 8, ages, persist, steady)
        if len(unseen):
            buffer.add(unseen.embeddings, unseen.track)
        if f % period == period - 1:
            discover(gate, buffer, rules, alpha)
        if f >= len(n) // 2:
            late += list(zip(labeled.labels, labeled.det_labels))
    if cap is not None:
        cap.release()
    coverage = {c: float(np.mean([lab != UNSEEN for lab, dc in late if dc == c]))
                for c, _ in Counter(dc for _, dc in late).most_common(3)}
    # The detector calls the same parked van "car" in one frame and "truck" in the next (even both in
    # one frame), so purity is also scored with those two as one class.
    vehicle = {"car": "car/truck", "truck": "car/truck"}
    counts = {name: (Counter(dc for lab, dc in late if lab == name),
                     Counter(vehicle.get(dc, dc) for lab, dc in late if lab == name)) for name in gate.names}
    counts = {name: c for name, c in counts.items() if c[0]}
    purity = [[c.most_common(1)[0][1] / sum(c.values()) for c in pair] for pair in counts.values()]
    majority = " ".join(f"{name}:{'+'.join(f'{k} {v}' for k, v in box.most_common(3))}" for name, (box, _) in counts.items())
    return len(gate), coverage, tuple(np.mean(purity, axis=0)) if purity else (float("nan"),) * 2, majority


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=VTEST)
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--cache", default=str(ROOT / "out" / "replay.npz"))
    p.add_argument("--max-frames", type=int, default=0, help="only the first N frames (0: all)")
    p.add_argument("--period", type=int, help="frames between clustering runs (default: the config's "
                   "cluster.period_frames, as a run of the file does)")
    p.add_argument("--detector-only", action="store_true",
                   help="replay only the cache's detector boxes (a proposals cache replayed as today's pipeline)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2", help="ClusterSettings values to sweep")
    args = p.parse_args()
    settings = load(args.config)
    period = args.period or settings.cluster.period_frames or 25
    cache = Path(args.cache)
    if not cache.exists():
        compute(settings, args.source, cache, args.max_frames)
    data = dict(np.load(cache))
    if args.detector_only and "origins" in data:
        keep, n = data["origins"] == "detector", data["n"]
        frame = np.repeat(np.arange(len(n)), n)
        data = {**{k: data[k][keep] for k in ("xyxy", "scores", "labels", "emb", "origins")},
                "n": np.bincount(frame[keep], minlength=len(n)), "shape": data["shape"]}
    grid = {k: [type(getattr(settings.cluster, k))(v) for v in vals.split(",")]
            for k, _, vals in (item.partition("=") for item in args.set)}
    print(f"{args.source}: {len(data['n'])} frames, {int(data['n'].sum())} boxes; base {settings.cluster}")
    for values in itertools.product(*grid.values()) if grid else [()]:
        s = dataclasses.replace(settings.cluster, **dict(zip(grid, values)))
        classes, coverage, purity, majority = replay(data, s, settings.gate.alpha, period, settings.gate.persist,
                                                     settings.gate.radius_pool, settings.gate.steady, args.source)
        cov = "  ".join(f"{c} {v:.2f}" for c, v in coverage.items())
        print(f"{dict(zip(grid, values))}  classes {classes:3d}  labelled: {cov}  purity {purity[0]:.2f} "
              f"(car/truck as one: {purity[1]:.2f})\n    boxes of each class (2nd half): {majority}", flush=True)


if __name__ == "__main__":
    main()
