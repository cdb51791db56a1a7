"""SKZC's KCH, label-free: mutual k-nearest-neighbour graph clustering of unseen embeddings with faiss."""
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


def knn_clusters(x: np.ndarray, k: int, min_similarity: float, min_size: int,
                 groups: np.ndarray | None = None, min_groups: int = 1) -> np.ndarray:
    """x: (N, D) normalized -> cluster label per row (N,) int64, -1 for rows in no cluster.

    Rows i and j are linked when each is among the other's k nearest neighbours and their cosine
    similarity is at least min_similarity; clusters are the connected components with at least
    min_size rows coming from at least min_groups distinct groups (e.g. tracks; a group of -1
    counts as a group of its own). Labels are numbered by decreasing cluster size."""
    n = len(x)
    labels = np.full(n, -1, np.int64)
    if n < max(min_size, 2):
        return labels
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x, np.float32))
    kk = min(k + 1, n)
    sims, nbrs = index.search(np.ascontiguousarray(x, np.float32), kk)  # (N, kk), self included
    rows = np.repeat(np.arange(n), kk)
    cols, vals = nbrs.ravel(), sims.ravel()
    ok = (cols >= 0) & (cols != rows) & (vals >= min_similarity)
    adj = coo_matrix((np.ones(ok.sum(), np.int8), (rows[ok], cols[ok])), shape=(n, n)).tocsr()
    mutual = adj.multiply(adj.T)  # keep i-j only if j in kNN(i) and i in kNN(j)
    _, comp = connected_components(mutual, directed=False)
    if groups is None:
        groups = np.full(n, -1, np.int64)
    singles = np.arange(n) + int(groups.max(initial=0)) + 1  # a -1 group counts as its own
    group_ids = np.where(groups >= 0, groups, singles)
    found = []
    for c in np.unique(comp):
        members = np.flatnonzero(comp == c)
        if len(members) >= min_size and len(np.unique(group_ids[members])) >= min_groups:
            found.append(members)
    for label, members in enumerate(sorted(found, key=len, reverse=True)):
        labels[members] = label
    return labels
