"""Pre-issue-8 clustering code (models/kch.py's deduplicate and knn_components), frozen as the benchmark baseline.

models/kch.py is being replaced by models/discovery.py; this copy stays so benchmarks/bench_discovery.py
can time today's code next to the new one in the same run. Do not use it in the pipeline."""
from __future__ import annotations

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def deduplicate(x: np.ndarray, min_similarity: float) -> np.ndarray:
    """Indices of rows kept when every row with cosine similarity >= min_similarity to an earlier
    kept row is dropped (consecutive frames of one object are near copies). x: (N, D) normalized."""
    index = faiss.IndexFlatIP(x.shape[1])
    keep = []
    for i, row in enumerate(x):
        if index.ntotal:
            sim, _ = index.search(row[None], 1)
            if sim[0, 0] >= min_similarity:
                continue
        index.add(row[None])
        keep.append(i)
    return np.asarray(keep, np.int64)


def knn_components(x: np.ndarray, k: int, min_similarity: float) -> np.ndarray:
    """x: (N, D) normalized -> component id per row (N,). Rows i and j are linked when each is among
    the other's k nearest neighbours and their cosine similarity is at least min_similarity."""
    n = len(x)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    x = np.ascontiguousarray(x, np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    kk = min(k + 1, n)
    sims, nbrs = index.search(x, kk)  # (N, kk), self included
    rows = np.repeat(np.arange(n), kk)
    cols, vals = nbrs.ravel(), sims.ravel()
    ok = (cols >= 0) & (cols != rows) & (vals >= min_similarity)
    adj = coo_matrix((np.ones(ok.sum(), np.int8), (rows[ok], cols[ok])), shape=(n, n)).tocsr()
    mutual = adj.multiply(adj.T)  # keep i-j only if j in kNN(i) and i in kNN(j)
    return connected_components(mutual, directed=False)[1].astype(np.int64)
