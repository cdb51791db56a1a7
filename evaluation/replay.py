"""evaluate.py --stream: test images replayed as tracked objects of near-identical frames, clustered as live."""
from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from evaluation.baselines import kmeans_silhouette, oracle_kmeans
from evaluation.metrics import stream_from_rows
from models.discovery import DiscoveryRules, discover
from models.unseen import UnseenBuffer
from models.sddc import UNSEEN, Gate, normalize
from models.tracks import LabelVotes

SHIFT, SCALE, GAIN = 0.05, 0.04, 0.06  # view jitter: shift (share of the side), scale, brightness gain
VIEW_SPEC = f"shift{SHIFT}-scale{SCALE}-gain{GAIN}"  # part of every view's cache key
POOL = 24  # distinct views a lingering object's frames are drawn from


def view_params(key: str, j: int) -> np.ndarray:
    """View j of the image keyed `key` (its absolute path): (dx, dy) as shares of the side, scale, gain.
    Fixed by key and j alone, so every seed reuses the same cached views."""
    rng = np.random.default_rng([zlib.crc32(key.encode()), j])
    return np.array([*rng.uniform(-SHIFT, SHIFT, 2), 1 + rng.uniform(-SCALE, SCALE), 1 + rng.uniform(-GAIN, GAIN)])


def perturb(image: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The image (H, W, 3) uint8 shifted (sub-pixel, bilinear), scaled about its centre and brightened."""
    h, w = image.shape[:2]
    dx, dy, scale, gain = params
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, float(scale))
    m[:, 2] += (dx * w, dy * h)
    out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def view_key(key: str, j: int) -> str:
    return f"{key}|{VIEW_SPEC}|view{j}"


@dataclass(frozen=True)
class Plan:
    """The stream, one entry per frame in showing order; a track's frames are consecutive."""
    obj: np.ndarray        # (F,) int64, the object (test image index) shown
    track: np.ndarray      # (F,) int64, its track id: one per appearance, never reused
    view: np.ndarray       # (F,) int64, which view of the image the frame is
    lingering: np.ndarray  # (L,) int64, objects shown on several broken tracks

    def tracks(self) -> list[tuple[int, int]]:
        """(start, stop) frame ranges of each track, in showing order."""
        cut = np.flatnonzero(np.diff(self.track)) + 1
        bounds = np.r_[0, cut, len(self.track)]
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def make_plan(n: int, seed: int, frames: tuple[int, int] = (3, 8), linger: float = 0.075,
              linger_tracks: tuple[int, int] = (3, 20), window: int = 150) -> Plan:
    """n objects in a seeded shuffled order, each on its own track of frames[0]..frames[1] frames; a
    `linger` share of them reappear on linger_tracks[0]..[1] new tracks each, scattered over the next
    `window` appearances (an object standing in view while its track keeps breaking)."""
    rng = np.random.default_rng([seed, 2])
    order = rng.permutation(n)
    lingering = np.sort(rng.choice(n, int(round(linger * n)), replace=False)) if n else np.zeros(0, np.int64)
    slots = [(float(p), int(o)) for p, o in enumerate(order)]
    where = {int(o): p for p, o in enumerate(order)}
    for o in lingering.tolist():
        extra = int(rng.integers(linger_tracks[0], linger_tracks[1] + 1))
        slots += [(where[o] + float(u), o) for u in rng.uniform(0, window, extra)]
    slots.sort(key=lambda s: s[0])
    stay = set(lingering.tolist())
    obj, track, view = [], [], []
    for t, (_, o) in enumerate(slots):
        k = int(rng.integers(frames[0], frames[1] + 1))
        views = rng.choice(POOL, k, replace=False) if o in stay else np.arange(k)
        obj += [o] * k
        track += [t] * k
        view += views.tolist()
    return Plan(np.array(obj, np.int64), np.array(track, np.int64), np.array(view, np.int64),
                lingering.astype(np.int64))


def view_embeddings(plan: Plan, keys: list[str], read: Callable[[int], np.ndarray], embed_cached) -> np.ndarray:
    """(F, D) raw embeddings of the plan's frames; each distinct (object, view) is rendered and embedded
    once, through `embed_cached(keys, load)` (which caches by key)."""
    pairs = np.unique(np.stack([plan.obj, plan.view], 1), axis=0)
    vkeys = [view_key(keys[o], j) for o, j in pairs.tolist()]
    rows = embed_cached(vkeys, lambda i: perturb(read(int(pairs[i, 0])), view_params(keys[pairs[i, 0]], pairs[i, 1])))
    at = {(int(o), int(j)): i for i, (o, j) in enumerate(pairs.tolist())}
    return rows[[at[(int(o), int(j))] for o, j in zip(plan.obj, plan.view)]]


@dataclass
class Replay:
    """What the replay saw: per frame the label shown, per class the objects discover put in it."""
    shown: np.ndarray                                             # (F,) object: label after the track vote
    members: dict[str, list[int]] = field(default_factory=dict)   # class -> object of each assigned row
    alias: dict[str, str] = field(default_factory=dict)           # absorbed class -> the class it merged into
    calls: int = 0                                                # discover calls

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name


def replay(x: np.ndarray, plan: Plan, gate: Gate, rules: DiscoveryRules, alpha: float, every: int,
           votes: LabelVotes | None, capacity: int, per_track: int) -> Replay:
    """Shows the plan's frames (x: (F, D) normalized) to the gate track by track: each frame is
    classified, voted over its track as the gate stage does, and the unseen ones join the buffer;
    `discover` runs after every `every` tracks and once at the end. Changes `gate` in place."""
    buf = UnseenBuffer(capacity, per_track=per_track)
    owner: dict[int, int] = {}  # buffer row id -> object
    out = Replay(np.empty(len(plan.obj), object))

    def cluster() -> None:
        found = discover(gate, buf, rules, alpha)
        out.calls += 1
        for name, ids in found.assigned.items():
            out.members.setdefault(name, []).extend(owner[int(i)] for i in ids)
        out.alias.update(dict(found.merged))
        if found.merged and votes is not None:
            votes.forget_except(set(gate.names))

    for t, (lo, hi) in enumerate(plan.tracks()):
        labels = gate.labels(gate.classify(x[lo:hi])[0])
        if votes is not None:
            labels = votes.vote(plan.track[lo:hi], labels)
        out.shown[lo:hi] = labels
        unseen = np.flatnonzero(np.array(labels, object) == UNSEEN)
        if len(unseen):
            ids = buf.add(x[lo:hi][unseen], plan.track[lo:hi][unseen])
            owner.update((int(i), int(plan.obj[lo])) for i in ids if i >= 0)
        if (t + 1) % every == 0:
            cluster()
    cluster()
    return out


def object_rows(plan: Plan, x: np.ndarray, rep: Replay, gate: Gate, seen: list[str], true: np.ndarray,
                paths: list[str]) -> list[dict]:
    """One record per object: its true class; `pred` the label most of its frames were shown with
    (a discovered class counts as "unknown"); `cluster` the discovered class most of its rows were
    assigned to by discover, else the one the final gate gives most of its frames, else None;
    `assigned` every class its rows were assigned to (merged classes followed)."""
    found = set(gate.names) - set(seen)
    assigned: dict[int, Counter] = {}
    for name, objs in rep.members.items():
        for o in objs:
            assigned.setdefault(o, Counter())[rep.resolve(name)] += 1
    final = np.array(gate.labels(gate.classify(x)[0]), object)
    stay = set(plan.lingering.tolist())
    rows = []
    for o in range(len(true)):
        frames = np.flatnonzero(plan.obj == o)
        mine = {n: c for n, c in assigned.get(o, Counter()).items() if n in found}
        if mine:
            cluster = max(sorted(mine), key=mine.get)
        else:
            top = Counter(final[frames].tolist()).most_common(1)
            cluster = top[0][0] if top and top[0][0] in found else None
        top_shown = Counter(rep.shown[frames].tolist()).most_common(1)
        pred = top_shown[0][0] if top_shown else UNSEEN
        rows.append({"path": paths[o], "true": str(true[o]), "seen": bool(true[o] in seen),
                     "pred": pred if pred in seen else "unknown", "cluster": cluster, "assigned": sorted(mine),
                     "frames": int(len(frames)), "tracks": int(len(np.unique(plan.track[frames]))),
                     "lingering": o in stay})
    return rows


def stream(x: np.ndarray, test: np.ndarray, true: np.ndarray, seen: list[str], gate: Gate, rules: DiscoveryRules,
           settings, alpha: float, seed: int, every: int, linger: float, read: Callable[[int], np.ndarray],
           keys: list[str], embed_cached) -> tuple[list[dict], dict]:
    """The stream protocol: the test images (rows `test` of x (N, D) normalized, classes `true`) as
    objects, replayed through `gate` (built from the memory; changed in place). read(i) / keys[i]: image i
    and its cache key. Returns the per-object records and the metrics."""
    plan = make_plan(len(test), seed, linger=linger, window=every)
    xv = normalize(view_embeddings(plan, [keys[i] for i in test], lambda o: read(int(test[o])), embed_cached))
    g, c = settings.gate, settings.cluster
    votes = LabelVotes(g.vote_window, g.vote_min, g.vote_share) if g.track else None
    rep = replay(xv, plan, gate, rules, alpha, every, votes, c.buffer_size, c.per_track)
    rows = object_rows(plan, xv, rep, gate, seen, true, [str(i) for i in test])
    unseen = ~np.isin(true, seen)
    base = {"oracle": np.full(len(true), None, object), "kmeans": np.full(len(true), None, object)}
    if unseen.any():  # the baselines cluster each unseen object's image, as in the batch protocol
        base["oracle"][unseen] = oracle_kmeans(x[test][unseen], len(set(true[unseen])), seed).tolist()
        base["kmeans"][unseen] = kmeans_silhouette(x[test][unseen], seed).tolist()
    for i, r in enumerate(rows):
        r.update({k: v[i] for k, v in base.items()})
    made = [n for n in gate.names if n not in seen]
    info = {"stream": {"every": every, "linger": linger, "discover_calls": rep.calls, "frames": len(plan.obj),
                       "tracks": len(plan.tracks())}, "classes": made, **stream_from_rows(rows, made, seen)}
    return rows, info
