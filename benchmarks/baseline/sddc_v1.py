"""Pre-issue-8 Gate.classify (models/sddc.py), frozen as the benchmark and test baseline.

It builds an (N, K, D) temporary; the new Gate.classify must give identical results at matrix-product speed."""
from __future__ import annotations

import numpy as np


def classify(centroids: np.ndarray, radii: np.ndarray, set_ids: np.ndarray,
             embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """centroids (K, D), radii (K,), set_ids (K,), embeddings (N, D) normalized -> (class index (N,)
    int64, -1 = unseen; distance (N,) float32 to the winning centroid, or to the nearest one when unseen)."""
    n = len(embeddings)
    if len(centroids) == 0 or n == 0:
        return np.full(n, -1, np.int64), np.full(n, np.inf, np.float32)
    d = np.linalg.norm(embeddings[:, None, :] - centroids[None, :, :], axis=2)  # (N, K)
    best = np.full(n, -1, np.int64)
    best_d = np.full(n, np.inf, np.float32)
    for s in np.unique(set_ids):
        members = np.flatnonzero(set_ids == s)
        nearest = members[np.argmin(d[:, members], axis=1)]              # (N,) class index
        nd = d[np.arange(n), nearest]
        inside = (nd <= radii[nearest]) & (nd < best_d)
        best[inside], best_d[inside] = nearest[inside], nd[inside]
    unseen = best < 0
    best_d[unseen] = d[unseen].min(axis=1)
    return best, best_d.astype(np.float32)
