"""k nearest neighbours by cosine similarity among the rows of one matrix: exact when small, approximate (PCA cells, exact re-rank) when large."""
from __future__ import annotations

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

EXACT_WORK = 5e9    # N^2 * D up to which the search is exact (about 0.3 s on 2 cores)
REDUCED_DIM = 64    # dimensions of the space candidates are searched in
CANDIDATES = 3      # candidates per neighbour, re-ranked by exact similarity
PROBES = 12         # k-means cells (the own and the nearest others) searched for a cell's rows
PCA_SAMPLE = 8192   # rows the projection is fitted on


def knn(x: np.ndarray, k: int, seed: int = 0, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """x: (N, D) float32, L2-normalized rows -> (neighbour indices (N, k) int64, cosine similarities
    (N, k) float32), most similar first, each row's own index excluded; -1 / -inf pad rows with fewer
    than k others. Exact when N^2 * D <= EXACT_WORK (or exact=True); otherwise candidates come from a
    cell-by-cell search in a PCA space of REDUCED_DIM dimensions and are re-ranked by their exact
    similarity, so every similarity returned is exact and only some true neighbours may be missed
    (recall@k about 0.9 on clustered data). Cost grows as N^1.5 * REDUCED_DIM + N * k * D.
    Deterministic for a given seed; faiss uses the process's thread setting (faiss.omp_set_num_threads)."""
    x = np.ascontiguousarray(x, np.float32)
    n = len(x)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if n < 2:
        return np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
    if exact is None:
        exact = float(n) * n * x.shape[1] <= EXACT_WORK or n <= CANDIDATES * k * 4
    if exact:
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        sims, nbrs = index.search(x, min(k + 1, n))  # (N, k + 1) self usually first
        return _drop_self(nbrs, sims, k)
    cand, order = _candidates(x, CANDIDATES * k + 1, seed)  # (N, C) by cell, self usually among them
    return _rerank(x, cand, order, k)


def _drop_self(nbrs: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (N, C) results -> the first k that are not the row itself (the last one when the row
    is missing, e.g. crowded out by exact copies), padded with -1 / -inf to (N, k)."""
    n, c = nbrs.shape
    drop = nbrs == np.arange(n)[:, None]
    drop[~drop.any(axis=1), c - 1] = True
    keep = np.argsort(drop, axis=1, kind="stable")[:, :min(k, c - 1)]  # kept columns, in order
    out_nbrs = np.full((n, k), -1, np.int64)
    out_sims = np.full((n, k), -np.inf, np.float32)
    out_nbrs[:, :keep.shape[1]] = np.take_along_axis(nbrs, keep, 1)
    out_sims[:, :keep.shape[1]] = np.take_along_axis(sims, keep, 1)
    out_sims[out_nbrs < 0] = -np.inf
    return out_nbrs, out_sims


def _candidates(x: np.ndarray, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """-> candidates (N, c) and order (N,): row i of candidates lists c candidate neighbours (row
    indices of x, self included, -1 when short) of row order[i]; order keeps each cell's rows together.
    Rows are projected on their top principal directions and split into k-means cells; each cell's
    rows are compared (one matrix product) with the rows of the PROBES cells whose centres lie nearest
    its own centre, and the c most similar become candidates."""
    y = _pca_project(x, REDUCED_DIM, seed)  # (N, R)
    n, r = y.shape
    cells = int(np.clip(4 * np.sqrt(n), 1, n // 16))
    km = faiss.Kmeans(r, cells, niter=8, seed=seed, max_points_per_centroid=16, min_points_per_centroid=4)
    km.train(y[np.sort(np.random.default_rng(seed).choice(n, min(n, 16 * cells), replace=False))])
    cell = km.index.search(y, 1)[1][:, 0]  # (N,)
    probes = np.argsort(-(km.centroids @ km.centroids.T), axis=1, kind="stable")[:, :PROBES]  # (cells, P)
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(cells + 1))
    y = y[order]  # cells are contiguous from here on: a pool is a few slices, not a gather
    out = np.full((n, c), -1, np.int64)
    # one BLAS thread: the products are small, and OpenBLAS's threads spin-wait for each other on a
    # busy machine (measured: 13.5 CPU-s for this loop with 2 threads at load 24, 0.9 with one)
    with threadpool_limits(1, user_api="blas"):
        for i in range(cells):
            lo, hi = bounds[i], bounds[i + 1]
            if lo == hi:
                continue
            spans = [(bounds[j], bounds[j + 1]) for j in probes[i]]
            pool = np.concatenate([np.arange(a, b) for a, b in spans])  # (M,) positions in cell order
            sims = y[lo:hi] @ np.concatenate([y[a:b] for a, b in spans]).T  # (Q, M)
            out[lo:hi, :min(c, len(pool))] = pool[_top_columns(sims, c)]
    return np.where(out >= 0, order[out], -1), order


def _top_columns(sims: np.ndarray, c: int) -> np.ndarray:
    """(Q, M) -> (Q, min(c, M)) column indices of each row's c largest values, in no particular order.
    A partition finds each row's c-th largest value (values only: several times faster than argpartition)
    and a mask picks the columns at or above it; with ties at that value, argpartition decides."""
    q, m = sims.shape
    if m <= c:
        return np.broadcast_to(np.arange(m), (q, m))
    cut = np.partition(sims, m - c, axis=1)[:, m - c:m - c + 1]  # (Q, 1)
    mask = sims >= cut
    flat = np.flatnonzero(mask)
    if len(flat) == q * c:  # no ties at the cut
        return (flat % m).reshape(q, c)
    return np.argpartition(-sims, c - 1, axis=1)[:, :c]


def _rerank(x: np.ndarray, cand: np.ndarray, order: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (N, C > k) of rows order (N,) -> the k most similar by exact cosine, indexed like x:
    (N, k) neighbours (-1 when short) and similarities (-inf). Rows are taken in cell order, a block at
    a time, so the candidate rows they read stay in cache."""
    n, c = cand.shape
    nbrs, sims = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
    for lo in range(0, n, block):
        rows, ids = order[lo:lo + block], cand[lo:lo + block]  # (B,), (B, C)
        queries, part = x[rows], np.empty(ids.shape, np.float32)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(part), faiss.swig_ptr(queries), faiss.swig_ptr(x),
                                         faiss.swig_ptr(ids), x.shape[1], len(rows), c)  # -inf at -1
        part[ids == rows[:, None]] = -np.inf  # the row itself
        top = np.argpartition(-part, k - 1, axis=1)[:, :k]  # (B, k) in no order
        best = np.take_along_axis(part, top, 1)
        rank = np.argsort(-best, axis=1, kind="stable")
        best, top = np.take_along_axis(best, rank, 1), np.take_along_axis(top, rank, 1)
        sims[rows] = best
        nbrs[rows] = np.where(np.isneginf(best), -1, np.take_along_axis(ids, top, 1))
    return nbrs, sims


def _pca_project(x: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """x (N, D) -> (N, dim) its centred projection on the top principal directions of a row sample
    (randomized range finder, two power iterations), rows renormalized."""
    n, d = x.shape
    if d <= dim:
        return x
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(n, min(n, PCA_SAMPLE), replace=False))]
    mean = sample.mean(axis=0)
    s = sample - mean  # (S, D)
    q = np.linalg.qr(s.T @ (s @ rng.standard_normal((d, dim + 16)).astype(np.float32)))[0]  # (D, dim+16)
    for _ in range(2):
        q = np.linalg.qr(s.T @ (s @ q))[0]
    small = s @ q  # (S, dim+16)
    vt = np.linalg.svd(small, full_matrices=False)[2]
    basis = (q @ vt[:dim].T).astype(np.float32)  # (D, dim)
    y = x @ basis - mean @ basis  # (N, dim)
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
