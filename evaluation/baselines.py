"""Clustering baselines of evaluate.py: k-means told the true k (oracle) and label-free k-means with k by silhouette."""
from __future__ import annotations

import faiss
import numpy as np
from sklearn.metrics import silhouette_score


def oracle_kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """faiss k-means (25 iterations, 3 restarts) with k clusters on x (N, D) normalized -> cluster per row (N,)."""
    k = min(k, len(x))
    if k < 2:
        return np.zeros(len(x), np.int64)
    km = faiss.Kmeans(x.shape[1], k, niter=25, nredo=3, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x))
    return km.index.search(np.ascontiguousarray(x), 1)[1][:, 0].astype(np.int64)


def kmeans_silhouette(x: np.ndarray, seed: int, k_max: int = 30, sample: int = 2000) -> np.ndarray:
    """Label-free k-means: the same k-means for k in 2..min(k_max, N/5), keeping the k whose clustering
    has the highest mean silhouette (euclidean on the normalized rows, on a seeded subsample of at
    most `sample` rows). x: (N, D) normalized -> cluster per row (N,); one cluster when N < 10."""
    n = len(x)
    top = min(k_max, n // 5)
    best, best_score = np.zeros(n, np.int64), -np.inf
    if top < 2:
        return best
    sub = np.sort(np.random.default_rng([seed, 3]).choice(n, min(n, sample), replace=False))
    for k in range(2, top + 1):
        labels = oracle_kmeans(x, k, seed)
        if len(np.unique(labels[sub])) < 2:
            continue
        score = float(silhouette_score(x[sub], labels[sub], metric="euclidean"))
        if score > best_score:
            best, best_score = labels, score
    return best
