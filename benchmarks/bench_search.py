#!/usr/bin/env python3
"""Still-object recall of the box predictor with oracle classes: today's proposals next to the class search.

    python benchmarks/bench_search.py [--seeds 0 1 2 3] [--frames 3] [--scale 1.0] [--per-class 4] [--limit 30]

Isolates the box predictor from discovery: per seed of tools/openworld_video.py, each object class is
made from ground-truth crops of its moving phase (centroid and radius as the gate makes them, alpha from
the config), then every candidate box of a few still-phase frames (objects still from the first frame, so
motion never sees them) is embedded by the crop path and classified by that gate. A box is kept when
seen as a class (what the gate does with a proposal). Printed per candidate set: recall (objects covered
at IoU >= 0.5 by a kept box with the object's class), box recall (any kept box), coverage (any candidate,
kept or not), false boxes per frame (kept, covering no object), candidates embedded per frame, seconds
per frame (single thread, the machine's load printed). Candidate sets: today's proposals (the detector's
boxes, low-score ones >= detect.proposal_score, best detect.max_proposals), all detector boxes >= 0.05
(best 50), the class search (models/search.py), the same windows judged as the gate stage does with the
map's vouching (`class search, vouched`: models/search.vouch, the reach rule), the same windows vouched for
by the class's whitened (LDA) model (`class search, LDA-vouched`), the windows ranked by that model and
vouched by it (`LDA search, LDA-vouched`), and today's proposals plus the search. Figures per seed, then all.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from models.boxes import crop
from models.proposals import MotionProposer, box_iou
from models.registry import DETECTORS, EMBEDDERS
from models.sddc import UNSEEN, Gate, normalize
from models.reference import Reference, hard_negatives
from models.search import VOUCHED, ClassSearch, dense_map, refine, vouch
from stages.config import load
from stages.detect import Proposals, detect
from stream.messages import Frame

ROOT = Path(__file__).resolve().parents[1]


def _video_tool():
    """tools/openworld_video.py of this checkout (tools/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location("openworld_video", ROOT / "tools" / "openworld_video.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up there
    spec.loader.exec_module(module)
    return module


def members(moving: list, motion: bool, history: int, min_box: int) -> list[tuple[int, np.ndarray, list]]:
    """Per sampled moving frame: (frame index, boxes (N, 4), their true classes). With `motion`, the
    motion regions (MOG2 over every frame) matching an object at IoU >= 0.5, as a discovery that made
    the classes pure from motion boxes would hold them; otherwise the ground-truth boxes."""
    proposer = MotionProposer("on", history, min_box=min_box) if motion else None
    out = []
    for i, (image, gt) in enumerate(moving):
        g = np.array([o["bbox"] for o in gt], np.float32).reshape(-1, 4)
        boxes = proposer(image)[0] if proposer else None
        if i % 4 or not len(g):
            continue
        if proposer is None:
            out.append((i, g, [o["cls"] for o in gt]))
            continue
        iou = box_iou(boxes, g)
        ok = iou.max(axis=1, initial=0) >= 0.5
        out.append((i, boxes[ok], [gt[j]["cls"] for j in iou[ok].argmax(axis=1)]))
    return out


def oracle(embedder, moving: list, rows: list, alpha: float, finder: ClassSearch, scale: float, grid: int,
           reference: Reference, negatives: int, dirty: Counter) -> Gate:
    """A gate whose classes are the member boxes' crops by true class; the search learns the same boxes, the
    reference their crops and, as the embed stage does, `negatives` background windows a frame (`dirty` counts
    those on an object: IoU >= 0.5 / >= 0.3 with one, of all learnt)."""
    x, classes = [], []
    for i, boxes, names in rows:
        image, gt = moving[i]
        x.append(embedder.embed(crop(image, boxes)))
        classes += names
        dense = dense_map(embedder, image, scale, grid)
        finder.learn(dense, boxes, names)
        reference.learn(normalize(x[-1]), names)
        negs = hard_negatives(finder, dense, boxes, list(dict.fromkeys(names)), finder.propose(dense), negatives)
        if len(negs):
            reference.add_background(normalize(embedder.embed(crop(image, negs))))
            g = np.array([o["bbox"] for o in gt], np.float32).reshape(-1, 4)
            on = box_iou(negs, g).max(axis=1, initial=0) if len(g) else np.zeros(len(negs))
            dirty["learnt"] += len(negs)
            dirty["iou>=0.5"] += int((on >= 0.5).sum())
            dirty["iou>=0.3"] += int((on >= 0.3).sum())
    x, classes = normalize(np.concatenate(x)), np.array(classes)
    gate = Gate.empty(set_size=7)
    for name in sorted(set(classes)):
        gate.add_members(name, x[classes == name], alpha, discovered=True)
    return gate


def judge(gate: Gate, x: np.ndarray, always: np.ndarray, factor: float = 1.0,
          det_labels: tuple = ()) -> tuple[np.ndarray, list]:
    """x (N, D) normalized box embeddings -> (kept (N,) bool, labels): the nearest class when within `factor`
    times its radius (the gate's rule at factor 1, its classes being one embedding set), else unseen; a box is
    kept when seen or `always` (the detector's confident boxes). With det_labels, a window the map vouched for
    is also seen when its nearest class is the one vouched (models/search.vouch, what the gate stage does)."""
    if len(x) == 0:
        return np.zeros(0, bool), []
    dist = np.linalg.norm(x[:, None] - gate.centroids[None], axis=2)  # (N, K)
    near = dist.argmin(axis=1)
    seen = dist[np.arange(len(x)), near] <= factor * gate.radii[near]
    if det_labels:
        seen = vouch(gate.centroids, x, det_labels, gate.names, np.where(seen, near, -1)) >= 0
    return seen | always, [gate.names[k] if ok else UNSEEN for k, ok in zip(near, seen)]


def tally(acc: dict, gt: list, known: np.ndarray, xyxy: np.ndarray, labels: list, candidates: np.ndarray) -> None:
    g = np.array([o["bbox"] for o in gt], np.float32).reshape(-1, 4)
    iou = box_iou(g, xyxy) if len(xyxy) else np.zeros((len(g), 0))
    right = np.array([[lab == o["cls"] for lab in labels] for o in gt], bool).reshape(iou.shape)
    acc["objects"] += len(g)
    acc["hits"] += int(((iou >= 0.5) & right).any(axis=1).sum())
    acc["boxed"] += int((iou >= 0.5).any(axis=1).sum())
    acc["covered"] += int((box_iou(g, candidates).max(axis=1, initial=0) >= 0.5).sum()) if len(candidates) else 0
    on_known = box_iou(xyxy, known).max(axis=1, initial=0) >= 0.5 if len(known) else np.zeros(len(xyxy), bool)
    acc["false"] += int((~(iou.max(axis=0, initial=0) >= 0.5) & ~on_known).sum())
    acc["frames"] += 1
    acc["embedded"] += len(candidates)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--frames", type=int, default=3, help="still frames per seed (they differ only by noise)")
    p.add_argument("--moving", type=int, default=80, help="moving frames (every 4th makes the oracle classes)")
    p.add_argument("--scale", type=float, default=1.0, help="frame scale for the search's feature map")
    p.add_argument("--grid", type=int, default=1, help="window positions per map cell and axis")
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--factors", type=float, nargs="+", default=[1.0],
                   help="radius multipliers to judge boxes with (1 = the gate's rule)")
    p.add_argument("--refine", type=int, default=0, help="rounds of refining searched windows (0: none)")
    p.add_argument("--near", type=float, default=1.25, help="refine windows within this many radii of a class")
    p.add_argument("--member-q", type=float, default=0.25, help="LDA vouching: quantile of the class's own scores")
    p.add_argument("--clean", action="store_true", help="LDA background from windows on no box of the frame only")
    p.add_argument("--shrink", type=float, default=0.1, help="LDA covariance shrinkage (x mean variance)")
    p.add_argument("--k", type=int, nargs="+", default=[1], help="kNN vouching: neighbours (1: no parameter)")
    p.add_argument("--negatives", type=int, default=4, help="kNN vouching: background windows learnt a frame")
    p.add_argument("--oracle", choices=("gt", "motion"), default="motion",
                   help="class members: ground-truth boxes, or motion boxes matching an object (IoU >= 0.5)")
    args = p.parse_args()
    torch.set_num_threads(1)
    s = load(args.config, {})
    d = s.detect
    model = DETECTORS.create(d.model, weights=d.weights, device=d.device, **d.options)
    model.score_threshold = 0.05
    embedder = EMBEDDERS.create(s.embed.model, weights=s.embed.weights, device=s.embed.device, **s.embed.options)
    runs = defaultdict(list)  # candidate set -> per frame (gate, gt, boxes, embeddings, always kept, seconds)
    extra = defaultdict(int)  # (candidate set, seed) -> crops embedded beside its boxes (refinement)
    video = _video_tool()
    known = detect(model, [Frame("bg", 0, 0.0, video.background())], d.score_threshold, d.min_box, d.nms_iou)[0].xyxy
    load0 = os.getloadavg()[0]
    for seed in args.seeds:
        moving, still = [], []
        for phase, source, image, gt in video.frames(args.moving, 0, args.frames, seed, empty=30):
            (still if phase == "still" else moving).append((image, gt))
        finder = ClassSearch(args.per_class, args.limit, accept="lda", member_q=args.member_q, clean=args.clean,
                             shrink=args.shrink)  # learns the background too; rank and accept set per row below
        rows = members(moving, args.oracle == "motion", d.motion_history, d.min_box)
        reference, dirty, sorts = Reference(), Counter(), Counter()
        gate = oracle(embedder, moving, rows, s.gate.alpha, finder, args.scale, args.grid, reference,
                      args.negatives, dirty)
        for i, (image, gt) in enumerate(still):
            frame = Frame("still", i, 0.0, image)
            g = np.array([o["bbox"] for o in gt], np.float32)
            cands = {"perfect boxes (ground truth)": (g, np.zeros(len(g), bool), 0.0)}
            tags = {}  # candidate set -> det_labels of its boxes (the vouched windows)
            done = {}  # boxes -> their embeddings: candidate sets sharing windows embed them once
            for name, score, limit in (("today's proposals", d.proposal_score, d.max_proposals),
                                       ("detector >= 0.05, best 50", 0.05, 50)):
                t = time.perf_counter()
                prop = Proposals(score, d.proposal_iou, limit, "off", d.motion_history, d.min_box)
                m = detect(model, [frame], d.score_threshold, d.min_box, d.nms_iou, prop)[0]
                cands[name] = (m.xyxy, np.array([o == "detector" for o in m.origins], bool), time.perf_counter() - t)
            t = time.perf_counter()
            dense = dense_map(embedder, image, args.scale, args.grid)
            finder.rank, finder.accept = "cosine", "reach"
            boxes, names, vouched = finder.candidates(dense)
            cands["class search"] = (boxes, np.zeros(len(boxes), bool), time.perf_counter() - t)
            cands["class search, vouched"] = cands["class search"]
            tags["class search, vouched"] = tuple(VOUCHED + n if v else "search" for n, v in zip(names, vouched))
            if len(boxes):  # the crops' kNN against the classes' members and the background reference
                t = time.perf_counter()
                xw = normalize(embedder.embed(crop(image, boxes)))
                done[np.asarray(boxes, np.float32).tobytes()] = xw
                for k in args.k:
                    reference.k = k
                    ok = reference.vouch(xw, names, gate.space)
                    row = f"class search, kNN-vouched k={k}"
                    cands[row] = (boxes, np.zeros(len(boxes), bool), cands["class search"][2] + time.perf_counter() - t)
                    tags[row] = tuple(VOUCHED + n if v else "search" for n, v in zip(names, ok))
                    iou = box_iou(boxes, g) if len(g) else np.zeros((len(boxes), 0))
                    for j, (n, v) in enumerate(zip(names, ok)):
                        where = ("background" if iou[j].max(initial=0) < 0.1 else "part of an object"
                                 if iou[j].max(initial=0) < 0.5 else
                                 "its class" if gt[int(iou[j].argmax())]["cls"] == n else "another class")
                        sorts[k, where, "windows"] += 1
                        sorts[k, where, "vouched"] += int(v)
            for rank in ("cosine", "lda"):  # the LDA model: vouching the cosine's windows; ranking its own
                t = time.perf_counter()
                finder.rank, finder.accept = rank, "lda"
                found, names, vouched = finder.candidates(dense)
                row = "class search, LDA-vouched" if rank == "cosine" else "LDA search, LDA-vouched"
                cands[row] = (found, np.zeros(len(found), bool), time.perf_counter() - t)
                tags[row] = tuple(VOUCHED + n if v else "search" for n, v in zip(names, vouched))
            if args.refine:
                t = time.perf_counter()
                tried = []  # refining windows embeds their variants too

                def embed_boxes(b: np.ndarray) -> np.ndarray:
                    tried.append(len(b))
                    return embedder.embed(crop(image, b))
                refined, _ = refine(boxes, embedder.embed(crop(image, boxes)), embed_boxes,
                                    lambda v: gate.space(normalize(v)), gate.centroids, gate.radii, args.near,
                                    rounds=args.refine)
                extra["class search, refined", seed] += sum(tried)
                cands["class search, refined"] = (refined, np.zeros(len(refined), bool),
                                                  cands["class search"][2] + time.perf_counter() - t)
            today = cands["today's proposals"]
            cands["today's + search"] = (np.vstack([today[0], boxes]), np.r_[today[1], cands["class search"][1]],
                                         today[2] + cands["class search"][2])
            for name, (xyxy, always, dt) in cands.items():
                t = time.perf_counter()
                key = np.asarray(xyxy, np.float32).tobytes()
                if key not in done:
                    done[key] = (normalize(embedder.embed(crop(image, xyxy))) if len(xyxy)
                                 else np.zeros((0, embedder.dim)))
                x = done[key]
                runs[name].append((seed, gate, gt, xyxy, x, always, tags.pop(name, ()), dt + time.perf_counter() - t))
        print(f"seed {seed}: classes {', '.join(f'{n} r={r:.2f}' for n, r in zip(gate.names, gate.radii))}",
              flush=True)
        print(f"  reference: {sum(map(len, reference.members.values()))} members, {len(reference.background)} "
              f"background windows ({dirty['iou>=0.5']} of {dirty['learnt']} learnt on an object at IoU >= 0.5, "
              f"{dirty['iou>=0.3']} at >= 0.3)")
        for k in args.k:
            print(f"  kNN k={k}, windows vouched for / found, by where they lie: " + ", ".join(
                f"{w} {sorts[k, w, 'vouched']}/{sorts[k, w, 'windows']}"
                for w in ("its class", "another class", "part of an object", "background")), flush=True)
    print(f"{len(args.seeds)} seeds x {args.frames} still frames; scale {args.scale}, per class {args.per_class}, "
          f"limit {args.limit}, oracle {args.oracle}; LDA member quantile {args.member_q}, shrink {args.shrink}, "
          f"{'clean' if args.clean else 'all-window'} background; "
          f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'candidates':28s} seeds  radius  recall  box recall  coverage  false/frame  embedded/frame  s/frame")
    groups = [[sd] for sd in args.seeds] + ([args.seeds] if len(args.seeds) > 1 else [])  # each seed, then all
    for factor, seeds, (name, rows) in ((f, ss, r) for f in args.factors for ss in groups for r in runs.items()):
        rows = [r[1:] for r in rows if r[0] in seeds]
        a = dict.fromkeys(("objects", "hits", "boxed", "covered", "false", "frames", "embedded"), 0)
        for gate, gt, xyxy, x, always, det_labels, dt in rows:
            kept, labels = judge(gate, x, always, factor, det_labels)
            tally(a, gt, known, xyxy[kept], [lab for lab, k in zip(labels, kept) if k], xyxy)
        n, f = max(a["objects"], 1), max(a["frames"], 1)
        a["embedded"] += sum(extra[name, sd] for sd in seeds)
        sec = sum(r[-1] for r in rows) / f
        print(f"{name:28s} {'all' if len(seeds) > 1 else seeds[0]:>5}  {factor:5.2f}x  {a['hits'] / n:6.2f}  "
              f"{a['boxed'] / n:10.2f}  {a['covered'] / n:8.2f}  {a['false'] / f:11.2f}  {a['embedded'] / f:14.1f}  "
              f"{sec:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
