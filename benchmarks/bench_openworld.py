#!/usr/bin/env python3
"""Open-world detection on ground truth: objects the COCO detector does not know, composited over vtest.avi.

    python benchmarks/bench_openworld.py [--empty 30 --moving 80 --stopped 30 --still 40] [--set detect.KEY=V ...]
           [--cache out/openworld.npz]   # detector results and box embeddings kept: gate-side reruns in seconds

The video comes from tools/openworld_video.py (exact boxes and classes). Every frame goes through the
stages' own functions in one process, twice: "today" (confident detector boxes only) and "open-world"
(the config's proposals: low-score detector boxes and motion regions, kept by the gate when explained),
each with its own gate, tracker and discovery (every --period frames, as the cluster stage would). One
detector call per frame serves both. Printed per phase and pipeline:
- recall: share of object boxes some kept box covers at IoU >= 0.5 (every object is unknown to COCO);
- false/frame: kept boxes covering no object, nor a COCO object the detector finds in the empty scene;
- labelled: share of covered objects whose box carries a discovered class (not "unseen");
- classes made vs real, purity (per class, the share of its object boxes of its majority class; box-
  weighted) and NMI between true and given class over labelled object boxes;
- known-class recall: objects of classes discovered as some class's majority *within the phase*, covered
  by a box labelled with that class;
- still phase, recall of classes found before (the issue's figure): objects whose class is the majority
  of some label in the moving and stopped phases, covered by a box carrying such a label (only the
  updated box predictor can give it).
Last, an embedding check: nearest-neighbour agreement of the object boxes' true classes across objects
(high: the embedding separates the classes and clustering is the limit).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

from openworld_video import background, frames  # noqa: E402
from models.discovery import DiscoveryRules, discover  # noqa: E402
from models.unseen import UnseenBuffer  # noqa: E402
from models.detections import Detections  # noqa: E402
from models.openworld import TrackAges  # noqa: E402
from models.proposals import box_iou  # noqa: E402
from models.registry import DETECTORS, EMBEDDERS  # noqa: E402
from models.reference import Reference  # noqa: E402
from models.search import VOUCHED, ClassSearch  # noqa: E402
from models.sddc import UNSEEN, Gate  # noqa: E402
from models.tracks import BoxTracker, LabelVotes  # noqa: E402
from stages.config import load  # noqa: E402
from stages.detect import Proposals, detect  # noqa: E402
from stages.embed import SEARCH_LABEL, Search, embed, searched  # noqa: E402
from stages.gate import label  # noqa: E402
from stream.messages import Frame, FrameEmbeddings  # noqa: E402


class Fixed:
    """A detector that returns what the real one already found for this frame."""

    def __init__(self, model, result: Detections):
        self.class_names, self.result = model.class_names, result

    def detect(self, images):
        return [self.result]


class Cache:
    """Detector results per frame and embeddings per box, kept on disk between runs (`--cache FILE`): the
    gate side can then be iterated on without the detector and embedder costs. Keyed by frame index."""

    def __init__(self, path: str | None, model, embedder):
        self.path, self.model, self.embedder = Path(path) if path else None, model, embedder
        self.det: dict[int, Detections] = {}
        self.emb: dict[tuple, np.ndarray] = {}
        self.embedded = 0
        if self.path and self.path.exists():
            z = np.load(self.path)
            for i, n in enumerate(np.cumsum(z["det_n"]) - z["det_n"]):
                k = slice(n, n + z["det_n"][i])
                self.det[i] = Detections(z["det_xyxy"][k], z["det_scores"][k], z["det_ids"][k])
            self.emb = {tuple(k): v for k, v in zip(z["emb_keys"].tolist(), z["emb_x"])}

    def detect(self, i: int, image: np.ndarray) -> Detections:
        if i not in self.det:
            self.det[i] = self.model.detect([image])[0]
        return self.det[i]

    def embed(self, i: int, msg):
        keys = [(i, *np.round(b, 1).tolist()) for b in msg.xyxy]
        todo = [j for j, k in enumerate(keys) if k not in self.emb]
        if todo:
            x = embed(self.embedder, [msg[np.array(todo, np.int64)]])[0].embeddings
            self.emb.update(zip((keys[j] for j in todo), x))
            self.embedded += len(todo)
        dim = self.embedder.dim
        x = np.stack([self.emb[k] for k in keys]) if keys else np.zeros((0, dim), np.float32)
        return FrameEmbeddings(msg.frame, msg.xyxy, msg.scores, msg.det_labels,
                               x.astype(np.float32), origins=msg.origins)

    def save(self) -> None:
        if not self.path:
            return
        order = sorted(self.det)
        ds = [self.det[i] for i in order]
        keys = list(self.emb)
        np.savez(self.path, det_n=np.array([len(d) for d in ds], np.int64),
                 det_xyxy=np.concatenate([d.xyxy for d in ds]).reshape(-1, 4),
                 det_scores=np.concatenate([d.scores for d in ds]), det_ids=np.concatenate([d.class_ids for d in ds]),
                 emb_keys=np.array(keys, np.float64).reshape(-1, 5),
                 emb_x=np.stack([self.emb[k] for k in keys]) if keys else np.zeros((0, 1), np.float32))


class Run:
    """One pipeline's gate side: gate, tracker per source, votes, ages, buffer, discovery rules."""

    def __init__(self, settings):
        self.s = settings
        self.gate, self.votes = Gate.empty(set_size=settings.gate.set_size), LabelVotes(
            settings.gate.vote_window, settings.gate.vote_min, settings.gate.vote_share)
        self.trackers, self.ages = defaultdict(BoxTracker), defaultdict(TrackAges)
        self.buffer = UnseenBuffer(settings.cluster.buffer_size, settings.cluster.per_track)
        self.rules = DiscoveryRules.from_settings(settings.cluster)
        self.rows = []  # per frame: (phase, gt boxes, gt classes, kept boxes, labels, origins)

    def step(self, msg, phase: str, gt: list[dict], gate=None) -> None:
        labeled, unseen = label(gate or self.gate, msg, self.trackers[msg.source], self.votes, 32,
                                self.ages[msg.source], self.s.gate.persist,
                                self.s.gate.steady)
        if len(unseen):
            self.buffer.add(unseen.embeddings, unseen.track)
        self.rows.append((phase, np.array([o["bbox"] for o in gt], np.float32).reshape(-1, 4),
                          [o["cls"] for o in gt], labeled.xyxy, labeled.labels, labeled.origins))

    def cluster(self) -> None:
        discover(self.gate, self.buffer, self.rules, self.s.gate.alpha)


class Nearest:
    """The run's gate, except that the last `k` boxes of a frame are seen as their crop's nearest class (no
    radius): the bound of any acceptance that rejects only background."""

    def __init__(self, gate: Gate, k: int):
        self.gate, self.k = gate, k

    def classify(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index, distance = self.gate.classify(x)
        if len(self.gate) and self.k:
            z = self.gate.space(x[-self.k:])
            index[-self.k:] = ((z[:, None, :] - self.gate.centroids[None]) ** 2).sum(-1).argmin(axis=1)
        return index, distance

    def labels(self, index: np.ndarray) -> list[str]:
        return self.gate.labels(index)


class Perfect(Run):
    """An ideal box predictor (`--perfect`): in the still phase the exact ground-truth boxes join the frame's
    boxes as proposals of score 0 (det_label "perfect"), accepted by the gate's radius or, `nearest`, as their
    crop's nearest class. What any box predictor could give with the classes discovery made."""

    def __init__(self, settings, cache: "Cache", nearest: bool):
        super().__init__(settings)
        self.cache, self.nearest = cache, nearest

    def step(self, msg, phase: str, gt: list[dict], gate=None) -> None:
        if phase != "still" or not gt:
            return super().step(msg, phase, gt)
        g = np.array([o["bbox"] for o in gt], np.float32)
        more = FrameEmbeddings(msg.frame, np.concatenate([msg.xyxy, g]),
                               np.concatenate([msg.scores, np.zeros(len(g), np.float32)]),
                               tuple(msg.det_labels) + ("perfect",) * len(g),
                               np.zeros((len(msg) + len(g), msg.embeddings.shape[1]), np.float32),
                               origins=tuple(msg.origins) + ("proposal",) * len(g))
        more = self.cache.embed(msg.frame.index, more)
        super().step(more, phase, gt, Nearest(self.gate, len(g)) if self.nearest else None)


def nmi(a: list, b: list) -> float:
    if not a:
        return float("nan")
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    joint = np.zeros((len(ua), len(ub)))
    np.add.at(joint, (ia, ib), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum()
    ha, hb = -(pa * np.log(pa)).sum(), -(pb * np.log(pb)).sum()
    return float(mi / max(np.sqrt(ha * hb), 1e-12)) if ha > 0 and hb > 0 else float(ha == hb == 0)


def discovered(run: Run, phases: tuple[str, ...]) -> dict:
    """Each label given to covered objects in `phases` -> its majority true class (what it was discovered as)."""
    by_label = defaultdict(Counter)
    for ph, g, classes, xyxy, labels, origins in run.rows:
        if ph in phases and len(g) and len(xyxy):
            iou = box_iou(g, xyxy)
            for i in np.flatnonzero(iou.max(axis=1) >= 0.5):
                if labels[iou[i].argmax()] != UNSEEN:
                    by_label[labels[iou[i].argmax()]][classes[i]] += 1
    return {p: c.most_common(1)[0][0] for p, c in by_label.items()}


def score(run: Run, phase: str, known: np.ndarray, before: dict | None = None) -> dict:
    covered = total = false = 0
    pairs = []  # (true class, given label) of covered objects
    frames_n = 0
    for ph, g, classes, xyxy, labels, origins in run.rows:
        if ph != phase:
            continue
        frames_n += 1
        iou = box_iou(g, xyxy)
        best = iou.argmax(axis=1) if len(xyxy) else np.zeros(len(g), int)
        hit = iou.max(axis=1, initial=0) >= 0.5
        covered, total = covered + hit.sum(), total + len(g)
        pairs += [(classes[i], labels[best[i]]) for i in np.flatnonzero(hit)]
        on_object = iou.max(axis=0, initial=0) >= 0.5
        on_known = box_iou(xyxy, known).max(axis=1, initial=0) >= 0.5
        false += int((~on_object & ~on_known).sum())
    named = [(t, p) for t, p in pairs if p != UNSEEN]
    by_label = defaultdict(Counter)
    for t, p in named:
        by_label[p][t] += 1
    majority = {p: c.most_common(1)[0][0] for p, c in by_label.items()}
    purity = sum(c.most_common(1)[0][1] for c in by_label.values()) / max(len(named), 1)
    found = set(majority.values())
    known_objects = sum(1 for ph, g, classes, *_ in run.rows if ph == phase for c in classes if c in found)
    known_hits = sum(1 for t, p in named if majority.get(p) == t and t in found)
    # the still-phase figure: objects of classes discovered *before* this phase, found with their class
    before = before or {}
    prior = set(before.values())
    prior_objects = sum(1 for ph, g, classes, *_ in run.rows if ph == phase for c in classes if c in prior)
    prior_hits = sum(1 for t, p in named if before.get(p) == t)
    return {"recall": covered / max(total, 1), "prior_recall": prior_hits / max(prior_objects, 1),
            "false": false / max(frames_n, 1),
            "labelled": len(named) / max(len(pairs), 1), "classes": len(by_label), "purity": purity,
            "nmi": nmi([t for t, _ in named], [p for _, p in named]),
            "known_recall": known_hits / max(known_objects, 1), "found": sorted(found)}


def embedding_check(crops: list[tuple[np.ndarray, str, int]], k: int = 15) -> str:
    """Is the embedding or the clustering the limit? Over every embedded box that covers an object (IoU >=
    0.5): the share whose nearest box of *another* object shows the same class, and the share of same-class
    boxes among its k nearest of other objects (views of the box's own object excluded: those are easy)."""
    if len(crops) < 2:
        return "embedding check: too few object boxes"
    x = np.stack([c[0] for c in crops]).astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    cls, obj = np.array([c[1] for c in crops]), np.array([c[2] for c in crops])
    sim = np.where(obj[:, None] == obj[None, :], -np.inf, x @ x.T)
    near = np.argsort(-sim, axis=1)[:, :k]
    return (f"embedding check ({len(x)} object boxes, {len(set(obj.tolist()))} objects): nearest box of another "
            f"object of the same class {np.mean(cls[near[:, 0]] == cls):.2f}; same class among the {k} nearest "
            f"of other objects {np.mean(cls[near] == cls[:, None]):.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--empty", type=int, default=30)
    p.add_argument("--moving", type=int, default=80)
    p.add_argument("--stopped", type=int, default=30)
    p.add_argument("--still", type=int, default=40)
    p.add_argument("--period", type=int, default=10, help="frames between discovery rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", help="npz of detector results and box embeddings, read and written (iteration)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--accept", choices=("knn", "lda", "reach"), default="knn",
                   help="how the search vouches for a window: its crop's kNN (the embed stage's), or the map's")
    p.add_argument("--k", type=int, default=1, help="kNN vouching: neighbours")
    p.add_argument("--negatives", type=int, default=4, help="kNN vouching: background windows learnt a frame")
    p.add_argument("--learn-proposed", action="store_true", help="kNN vouching: background may be learnt on the "
                   "frame's proposed windows unless vouched for (default: never on them)")
    p.add_argument("--member-origins", help="kNN vouching: origins of the boxes learnt as members (e.g. "
                   "detector,motion; default every origin)")
    p.add_argument("--member-q", type=float, default=0.25, help="LDA vouching: quantile of the class's own scores")
    p.add_argument("--search", action="store_true", help="a third pipeline, '+search': the open-world one with "
                   "the class search of embed.search (docs/box-predictor.md); its windows are not cached; and a "
                   "fourth, '+search/r': the same windows judged by the radius alone (no window vouched for)")
    p.add_argument("--perfect", action="store_true", help="two more pipelines, the open-world one with the exact "
                   "ground-truth boxes added in the still phase: '+gt' (the gate's radius decides) and "
                   "'+gt/nn' (each seen as its nearest class): the bound of any box predictor")
    args = p.parse_args()
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    settings = load(args.config, overrides)
    d, e = settings.detect, settings.embed
    model = DETECTORS.create(d.model, weights=d.weights, device=d.device, **d.options)
    if getattr(model, "score_threshold", 0.0) > d.proposal_score:
        model.score_threshold = d.proposal_score
    embedder = EMBEDDERS.create(e.model, weights=e.weights, device=e.device, **e.options)
    known = detect(model, [Frame("bg", 0, 0.0, background())], d.score_threshold, d.min_box, d.nms_iou)[0].xyxy
    proposals = Proposals(d.proposal_score, d.proposal_iou, d.max_proposals, d.motion, d.motion_history, d.min_box)
    today, new = Run(settings), Run(settings)
    srun = Run(settings) if args.search else None
    rrun = Run(settings) if args.search else None  # the same windows, the gate's radius alone (before vouching)
    spent, vouched = Counter(), Counter()  # phase -> seconds in the search (map, windows, their crops); vouched windows
    knn = args.accept == "knn"
    finder = ClassSearch(e.search_per_class, e.search_limit, accept="none" if knn else args.accept,
                         member_q=args.member_q)
    search = None if srun is None else Search(embedder, srun.gate, finder, e.search_scale, e.search_refine,
                                              e.search_snap, Reference(k=args.k) if knn else None, args.negatives,
                                              tuple(args.member_origins.split(",")) if args.member_origins else None,
                                              args.learn_proposed)
    learnt = Counter()  # (phase, what) -> background windows learnt, those on an object; vouched on background
    cache = Cache(args.cache, model, embedder)
    perfect = [("+gt/nn" if nn else "+gt", Perfect(settings, cache, nn)) for nn in (False, True)] if args.perfect else []
    t0, n = time.monotonic(), 0
    origins = Counter()
    crops = []  # (embedding, true class, object) of every embedded box covering an object
    video = frames(args.moving, args.stopped, args.still, args.seed, empty=args.empty)
    for i, (phase, source, image, gt) in enumerate(video):
        frame = Frame(source, i, 0.0, image)
        fixed = Fixed(model, cache.detect(i, image))
        msg = cache.embed(i, detect(fixed, [frame], d.score_threshold, d.min_box, d.nms_iou, proposals)[0])
        origins.update(msg.origins)
        today.step(msg[np.array([o == "detector" for o in msg.origins], bool)], phase, gt)
        new.step(msg, phase, gt)
        if srun is not None:
            search.gate = srun.gate  # discovery changes the run's gate in place; be explicit
            t = time.monotonic()
            smsg = searched(embedder, msg, search)
            spent[phase] += time.monotonic() - t
            vouched[phase] += sum(lab.startswith(VOUCHED) for lab in smsg.det_labels)
            g = np.array([o["bbox"] for o in gt], np.float32).reshape(-1, 4)
            on = box_iou(search.learnt, g).max(axis=1, initial=0) if len(g) and len(search.learnt) else np.zeros(0)
            learnt[phase, "all"] += len(search.learnt)
            learnt[phase, "on an object"] += int((on >= 0.5).sum())
            for j in search.members:  # the reference's members of this frame, by origin and whether on an object
                hit = len(g) and box_iou(msg.xyxy[j:j + 1], g).max() >= 0.5
                learnt[phase, "member", msg.origins[j], "on an object" if hit else "off"] += 1
            mine = np.array([lab.startswith(VOUCHED) for lab in smsg.det_labels], bool)
            if mine.any():
                over = box_iou(smsg.xyxy[mine], g).max(axis=1, initial=0) if len(g) else np.zeros(int(mine.sum()))
                learnt[phase, "vouched on background"] += int((over < 0.5).sum())
            srun.step(smsg, phase, gt)
            plain = tuple(SEARCH_LABEL if lab.startswith(VOUCHED) else lab for lab in smsg.det_labels)
            rrun.step(FrameEmbeddings(smsg.frame, smsg.xyxy, smsg.scores, plain, smsg.embeddings,
                                      origins=smsg.origins), phase, gt)
        for _, run in perfect:
            run.step(msg, phase, gt)
        if gt and len(msg):
            iou = box_iou(msg.xyxy, np.array([o["bbox"] for o in gt], np.float32))
            crops += [(msg.embeddings[j], gt[int(iou[j].argmax())]["cls"], int(iou[j].argmax()) + 100 * (phase == "still"))
                      for j in np.flatnonzero(iou.max(axis=1) >= 0.5)]
        if i % args.period == args.period - 1:
            today.cluster()
            new.cluster()
            if srun is not None:
                srun.cluster()
                rrun.cluster()
            for _, run in perfect:
                run.cluster()
        n += 1
    cache.save()
    print(f"{n} frames in {time.monotonic() - t0:.0f} s ({cache.embedded} boxes embedded); "
          f"boxes before the gate by origin: {dict(origins)}; "
          f"COCO objects in the empty scene: {len(known)}")
    print("phase    pipeline    recall  false/frame  labelled  classes/real  purity   NMI  known-class recall  "
          "recall of classes found before")
    for phase in ("empty", "moving", "stopped", "still"):
        searches = [("+search", srun), ("+search/r", rrun)] if srun else []
        for name, run in [("today", today), ("open-world", new)] + searches + perfect:
            r = score(run, phase, known, discovered(run, ("moving", "stopped")) if phase == "still" else None)
            print(f"{phase:8s} {name:10s}  {r['recall']:6.2f}  {r['false']:11.2f}  {r['labelled']:8.2f}  "
                  f"{r['classes']:7d}/6  {r['purity']:6.2f}  {r['nmi']:4.2f}  {r['known_recall']:6.2f} "
                  f"({', '.join(r['found'])})" + (f"  {r['prior_recall']:.2f}" if phase == "still" else ""), flush=True)
    print(f"classes at the end: today {len(today.gate)}, open-world {len(new.gate)}"
          + (f", +search {len(srun.gate)}, +search/r {len(rrun.gate)}" if srun else ""))
    if srun is not None:
        counts = {"empty": args.empty, "moving": args.moving, "stopped": args.stopped, "still": args.still}
        print("search s/frame: " + ", ".join(f"{ph} {spent[ph] / max(k, 1):.2f}" for ph, k in counts.items()))
        print("vouched windows/frame: " + ", ".join(f"{ph} {vouched[ph] / max(k, 1):.2f}" for ph, k in counts.items()))
        print("vouched windows on background (IoU < 0.5 with every object)/frame: " + ", ".join(
            f"{ph} {learnt[ph, 'vouched on background'] / max(k, 1):.2f}" for ph, k in counts.items()))
        if knn:
            print("background windows learnt (embedded)/frame, of which on an object (IoU >= 0.5): " + ", ".join(
                f"{ph} {learnt[ph, 'all'] / max(k, 1):.2f} ({learnt[ph, 'on an object']})" for ph, k in counts.items()))
            print("members learnt (on an object / off every object) by origin: " + "; ".join(
                f"{ph} " + ", ".join(f"{o} {learnt[ph, 'member', o, 'on an object']}/{learnt[ph, 'member', o, 'off']}"
                                     for o in ("detector", "proposal", "motion")) for ph in counts))
    print(embedding_check(crops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
