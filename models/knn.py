"""k nearest neighbours of normalized embeddings by inner product (faiss), self excluded."""
from __future__ import annotations

import faiss
import numpy as np


def knn(x: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x: (N, D) normalized -> (neighbour indices (N, k) int64, cosines (N, k) float32), self
    excluded; -1 / -inf where fewer than k other rows exist. Exact."""
    n = len(x)
    nbrs, sims = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
    if n < 2 or k < 1:
        return nbrs, sims
    x = np.ascontiguousarray(x, np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    kk = min(k + 1, n)
    s, i = index.search(x, kk)
    self_hit = i == np.arange(n)[:, None]
    # drop self (or the last column when self was tied out of the list)
    drop = np.where(self_hit.any(axis=1), self_hit.argmax(axis=1), kk - 1)
    keep = np.ones_like(self_hit)
    keep[np.arange(n), drop] = False
    m = kk - 1
    nbrs[:, :m] = i[keep].reshape(n, m)
    sims[:, :m] = s[keep].reshape(n, m)
    return nbrs, sims
