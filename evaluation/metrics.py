"""Open-world metrics of evaluate.py (SKZC Task 1 clustering, Task 2 seen/unknown), recomputable from its predictions."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Hashable, Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, precision_recall_fscore_support

UNKNOWN = "unknown"


def harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def task2(true: Sequence[str], pred: Sequence[str], seen: Sequence[bool], seen_classes: Sequence[str]) -> dict:
    """true: true class per test image; pred: a seen class name or UNKNOWN; seen: whether the true
    class is a seen class. Per-class precision/recall/F1 over the labels seen_classes + [UNKNOWN]
    (an unseen-class image's right answer is UNKNOWN), their macro means, Sacc, Uacc and H."""
    seen = np.asarray(seen, bool)
    target = np.where(seen, np.asarray(true, object), UNKNOWN)
    pred = np.asarray(pred, object)
    labels = list(seen_classes) + [UNKNOWN]
    if len(target):
        p, r, f, support = precision_recall_fscore_support(target, pred, labels=labels, zero_division=0)
    else:  # scikit-learn refuses empty input
        p = r = f = np.zeros(len(labels))
        support = np.zeros(len(labels), np.int64)
    sacc = float(np.mean(pred[seen] == target[seen])) if seen.any() else 0.0
    uacc = float(np.mean(pred[~seen] == UNKNOWN)) if (~seen).any() else 0.0
    return {"precision_macro": float(p.mean()), "recall_macro": float(r.mean()), "f1_macro": float(f.mean()),
            "sacc": sacc, "uacc": uacc, "h": harmonic(sacc, uacc), "n": int(len(target)),
            "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                 "support": int(support[i])} for i, name in enumerate(labels)}}


def singletons(clusters: Sequence[Hashable | None]) -> np.ndarray:
    """Cluster labels (ints or names) as ids, with every None (an image in no cluster) a cluster of its own."""
    ids: dict[Hashable, int] = {}
    out = np.empty(len(clusters), np.int64)
    fresh = -1
    for i, c in enumerate(clusters):
        if c is None:
            out[i], fresh = fresh, fresh - 1
        else:
            out[i] = ids.setdefault(c, len(ids))
    return out


def hungarian_acc(true: Sequence, clusters: np.ndarray) -> float:
    """Best one-to-one matching of clusters to classes (scipy's Hungarian solver); the fraction of
    images whose cluster is matched to their class. Unmatched clusters count as wrong."""
    if len(true) == 0:
        return 0.0
    _, t = np.unique(np.asarray(true, object).astype(str), return_inverse=True)
    _, c = np.unique(clusters, return_inverse=True)
    counts = np.zeros((c.max() + 1, t.max() + 1), np.int64)
    np.add.at(counts, (c, t), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(true))


def clustering(true: Sequence, clusters: Sequence[int | None]) -> dict:
    """NMI, ACC, ARI of a clustering against the true classes; None = in no cluster (a singleton)."""
    if len(true) == 0:
        return {"nmi": 0.0, "acc": 0.0, "ari": 0.0}
    ids = singletons(clusters)
    true = np.asarray(true, object).astype(str)
    return {"nmi": float(normalized_mutual_info_score(true, ids)), "acc": hungarian_acc(true, ids),
            "ari": float(adjusted_rand_score(true, ids))}


def task1(true: Sequence[str], ours: Sequence, oracle: Sequence, kmeans: Sequence | None = None) -> dict:
    """Our clustering, the oracle's (k-means told the true k) and, if given, the label-free k-means
    baseline (k by silhouette) over the same images; how many of them ours covers, its scores on just
    the covered ones (an optimistic view, for comparison) and the NMI of clustering nothing (every
    image a singleton scores above 0: read NMI against it)."""
    ours_scores, oracle_scores = clustering(true, ours), clustering(true, oracle)
    covered = [i for i, c in enumerate(ours) if c is not None]
    inside = clustering([true[i] for i in covered], [ours[i] for i in covered])
    out = {**ours_scores, **{f"{k}_oracle": v for k, v in oracle_scores.items()},
           **{f"{k}_covered": v for k, v in inside.items()},
           "nmi_floor": clustering(true, [None] * len(true))["nmi"],  # NMI when nothing is clustered
           "n": len(true), "coverage": len(covered) / len(true) if len(true) else 0.0,
           "clusters": len({c for c in ours if c is not None})}
    if kmeans is not None:
        out.update({f"{k}_kmeans_silhouette": v for k, v in clustering(true, kmeans).items()})
        out["k_kmeans_silhouette"] = len({c for c in kmeans if c is not None})
    return out


def from_rows(rows: Iterable[dict], seen_classes: Sequence[str]) -> dict:
    """Both tasks' metrics from evaluate.py's prediction records {"true", "pred", "seen", "cluster",
    "oracle", "kmeans", "oracle_all"}. Task 1 is scored over the unseen-class images the gate flagged
    unknown (ours, the oracle and the k-means baseline cluster exactly that set); `task1_all` over all
    unseen-class images, those the gate let through scored as singletons, against an oracle of them all."""
    rows = list(rows)
    unseen = [r for r in rows if not r["seen"]]
    flagged = [r for r in unseen if r["pred"] == UNKNOWN]
    return {"task1": task1([r["true"] for r in flagged], [r["cluster"] for r in flagged],
                           [r["oracle"] for r in flagged], [r["kmeans"] for r in flagged]),
            "task1_all": task1([r["true"] for r in unseen], [r["cluster"] for r in unseen],
                               [r["oracle_all"] for r in unseen]),
            "task2": task2([r["true"] for r in rows], [r["pred"] for r in rows], [r["seen"] for r in rows],
                           seen_classes)}


def stream_from_rows(rows: Iterable[dict], made: Sequence[str], seen_classes: Sequence[str]) -> dict:
    """Metrics of a stream replay from its per-object records (eval_stream.object_rows plus "oracle",
    "kmeans") and the names of the classes discovery made. Task 1 over every unseen-class object; a
    class is "single-object" when all the buffer rows discover assigned to it came from one object."""
    rows = list(rows)
    unseen = [r for r in rows if not r["seen"]]
    objects: dict[str, set[int]] = {name: set() for name in made}
    for i, r in enumerate(rows):
        for name in r["assigned"]:
            objects.setdefault(name, set()).add(i)
    single = sorted(n for n in made if len(objects[n]) == 1)
    real = len({r["true"] for r in unseen})
    return {"task1": task1([r["true"] for r in unseen], [r["cluster"] for r in unseen],
                           [r["oracle"] for r in unseen], [r["kmeans"] for r in unseen]),
            "task2": task2([r["true"] for r in rows], [r["pred"] for r in rows], [r["seen"] for r in rows],
                           seen_classes),
            "classes_made": len(made), "classes_real": real, "classes_ratio": len(made) / real if real else 0.0,
            "single_object_classes": len(single), "single_object_names": single,
            "lingering": sum(r["lingering"] for r in rows),
            "lingering_own_class": sum(rows[next(iter(objects[n]))]["lingering"] for n in single),
            "objects": len(rows), "tracks": sum(r["tracks"] for r in rows), "frames": sum(r["frames"] for r in rows)}


def from_predictions(path: str | Path, seen_classes: Sequence[str], made: Sequence[str] | None = None) -> dict:
    """Recomputes metrics.json's scores from a preds.jsonl written by evaluate.py: "task1", "task1_all"
    and "task2" of the batch protocol, or with `made` (metrics.json's "classes"), the stream's."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return from_rows(rows, seen_classes) if made is None else stream_from_rows(rows, made, seen_classes)
