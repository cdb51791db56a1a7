#!/usr/bin/env python3
"""Prints clustering time (10^3-10^5 rows, 384-d and 1280-d) and gate time (10-10^4 classes) for ours next to the pre-issue-8 code.

    python benchmarks/bench_discovery.py [--sizes 1000,10000,100000] [--dims 384,1280] [--budget 120]
           [--embeddings /work/data/eval0/embeddings-efficientnet_lite0-128.npz]

Rows are real embeddings when --embeddings exists (each new row a random point between a stored
embedding and one of its 10 nearest, plus a little noise; 384-d by a fixed random projection), else
seeded Gaussian blobs. Ours is models.discovery.communities with DiscoveryRules' defaults (igraph Leiden on
the kNN graph of models.knn), beside one plain igraph community_leiden run on the same graph
(the same objective, a faster implementation). Today's is
deduplicate (0.95) + knn_components (k 10, similarity 0.6), frozen in benchmarks/baseline/kch_v1.py;
a baseline size projected (quadratic in rows) above --budget seconds is not run, and its projection is
printed marked "~". Gate: per frame of 20 boxes, 1280-d, Gate.classify vs benchmarks/baseline/sddc_v1.py and
one bare matrix product of the same sizes. Round (--round-sizes): one whole models.discovery.discover round
on a buffer of tracked objects (3 views each) beside the same round with the kNN search and graph edges
as they were before the scale pass (benchmarks/baseline/knn_v1.py, np.unique edges).
Times are wall seconds (and CPU seconds over all threads), median of repeats; the machine's load
average is printed with them. On a shared machine --threads 1 gives the steadiest figures: CPU
seconds then approximate wall seconds on an idle core.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import faiss
import numpy as np

from baseline import kch_v1, knn_v1, sddc_v1
from models import discovery
from models.discovery import DiscoveryRules, communities, discover
from models.unseen import UnseenBuffer
from models.knn import knn
from models.sddc import Gate, normalize

RULES = DiscoveryRules()
K = RULES.k


def real_rows(path: Path, n: int, dim: int, seed: int = 0) -> np.ndarray:
    """n rows near the data manifold of stored embeddings: between a row and one of its 10 nearest."""
    rng = np.random.default_rng(seed)
    base = normalize(np.load(path)["embeddings"])
    if dim != base.shape[1]:
        base = normalize(base @ rng.normal(size=(base.shape[1], dim)).astype(np.float32))
    near = knn(base, 10)[0]
    a = rng.integers(0, len(base), n)
    b = near[a, rng.integers(0, 10, n)]
    t = rng.uniform(0, 1, (n, 1)).astype(np.float32)
    return normalize(base[a] + t * (base[b] - base[a]) + 0.2 / np.sqrt(dim) * rng.normal(size=(n, dim)))


def blob_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, dim)).astype(np.float32)
    return normalize(centres[rng.integers(0, 200, n)] + 1.2 * rng.normal(size=(n, dim)).astype(np.float32))


def knn_graph(x: np.ndarray):
    """The symmetrized, unweighted kNN graph (k 15) of the rows as an igraph Graph."""
    import igraph
    n = len(x)
    nbrs = knn(x, K)[0]
    i, j = np.repeat(np.arange(n), K), nbrs.ravel()
    ok = j >= 0
    pairs = np.unique(np.minimum(i[ok], j[ok]) * n + np.maximum(i[ok], j[ok]))  # each edge once
    return igraph.Graph(n=n, edges=np.stack([pairs // n, pairs % n], 1))


def igraph_leiden(x: np.ndarray) -> np.ndarray:
    """Cluster per row: igraph's own Leiden (modularity with a resolution: leidenalg's RBConfiguration
    objective) on the kNN graph, one run."""
    import random
    random.seed(0)  # igraph draws from Python's random
    part = knn_graph(x).community_leiden(objective_function="modularity", resolution=RULES.resolution, n_iterations=2)
    return np.asarray(part.membership, np.int64)


def lead(x: np.ndarray) -> np.ndarray:
    return communities(x, RULES.k, RULES.resolution, RULES.seed, RULES.restarts)


def today(x: np.ndarray) -> np.ndarray:
    keep = kch_v1.deduplicate(x, 0.95)
    return kch_v1.knn_components(x[keep], 10, 0.6)


def timed(fn, *args, repeats: int = 1, best: bool = False) -> tuple[float, float, object]:
    """Median (or best) wall and CPU seconds (all threads) of fn(*args) over repeats; its last result."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    pick = min if best else np.median
    return float(pick(walls)), float(pick(cpus)), out


def recall_at_k(x: np.ndarray, nbrs: np.ndarray, sample: int = 1000) -> float:
    rows = np.random.default_rng(0).choice(len(x), min(sample, len(x)), replace=False)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, found = index.search(x[rows], K + 1)
    hits = [len(set(f[f != r][:K]) & set(nbrs[r])) / K for r, f in zip(rows, found)]
    return float(np.mean(hits))


def bench_clustering(sizes: list[int], dims: list[int], budget: float, embeddings: Path, lead_max: int) -> None:
    from sklearn.metrics import normalized_mutual_info_score
    source = f"real ({embeddings.name})" if embeddings.exists() else "Gaussian blobs"
    print(f"\n## Clustering ({source}), seconds wall / CPU\nA = models.discovery.communities (k {RULES.k}, "
          f"resolution {RULES.resolution}, {RULES.restarts} igraph Leiden runs, one above 20 000 rows); B = the same kNN graph, "
          f"one igraph community_leiden run (same objective); today = deduplicate(0.95) + knn_components(k 10, 0.6)")
    print("| rows | dim | knn | recall@15 | A (clusters) | B (clusters) | NMI(A, B) | today |")
    print("|---|---|---|---|---|---|---|---|")
    for dim in dims:
        last = None  # (rows, seconds) of today's largest measured run
        for n in sizes:
            x = real_rows(embeddings, n, dim) if embeddings.exists() else blob_rows(n, dim)
            t_knn, c_knn, (nbrs, _) = timed(knn, x, K)
            t_b, c_b, b = timed(igraph_leiden, x)
            if n <= lead_max:
                t_a, c_a, a = timed(lead, x)
                a_s, nmi = f"{t_a:.2f} / {c_a:.2f} ({len(np.unique(a))})", f"{normalized_mutual_info_score(a, b):.2f}"
            else:
                a_s, nmi = "not run (--lead-max)", "-"
            projected = last[1] * (n / last[0]) ** 2 if last else 0.0
            if projected > budget:
                today_s = f"~{projected:.0f} wall (projected, not run)"
            else:
                t_today, c_today, _ = timed(today, x)
                last, today_s = (n, t_today), f"{t_today:.2f} / {c_today:.2f}"
            print(f"| {n} | {dim} | {t_knn:.2f} / {c_knn:.2f} | {recall_at_k(x, nbrs):.3f} | "
                  f"{a_s} | {t_b:.2f} / {c_b:.2f} ({len(np.unique(b))}) | {nmi} | {today_s} |", flush=True)


def gate_of(classes: int, dim: int, rng: np.random.Generator) -> tuple[Gate, np.ndarray]:
    """A gate whose centroids are means of 5 members around random directions, and 20 boxes near them."""
    protos = normalize(rng.normal(size=(classes, dim)))
    members = normalize(np.repeat(protos, 5, 0) + 0.04 * rng.normal(size=(classes * 5, dim)))
    centroids = members.reshape(classes, 5, dim).mean(1)
    radii = np.linalg.norm(members.reshape(classes, 5, dim) - centroids[:, None], axis=2).max(1)
    gate = Gate([f"c{i}" for i in range(classes)], centroids.astype(np.float32), radii.astype(np.float32),
                np.full(classes, 5, np.int64), np.arange(classes) // 7)
    boxes = normalize(protos[rng.integers(0, classes, 20)] + 0.04 * rng.normal(size=(20, dim)))
    return gate, boxes


def bench_gate(class_counts: list[int], dim: int = 1280) -> None:
    print(f"\n## Gate.classify, one frame of 20 boxes, {dim}-d, ms: wall median (best) / CPU median")
    print("| classes | new | today | one bare product | same result | load average |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for k in class_counts:
        gate, boxes = gate_of(k, dim, rng)
        reps = 3 if k >= 1000 else 30
        new, old = gate.classify(boxes), sddc_v1.classify(gate.centroids, gate.radii, gate.set_ids, boxes)
        same = np.array_equal(new[0], old[0]) and np.array_equal(new[1], old[1])
        new = [timed(gate.classify, boxes, repeats=30, best=b)[:2] for b in (False, True)]
        old = [timed(sddc_v1.classify, gate.centroids, gate.radii, gate.set_ids, boxes, repeats=reps, best=b)[:2]
               for b in (False, True)]
        bare = [timed(np.matmul, gate.centroids, boxes.T, repeats=30, best=b)[:2] for b in (False, True)]
        cell = [f"{1e3 * t[0][0]:.1f} ({1e3 * t[1][0]:.1f}) / {1e3 * t[0][1]:.1f}" for t in (new, old, bare)]
        print(f"| {k} | {' | '.join(cell)} | {same} | {os.getloadavg()[0]:.1f} |", flush=True)


def unique_edges(nbrs: np.ndarray) -> np.ndarray:
    """The graph's edges as built before the scale pass (np.unique on pair keys)."""
    n = len(nbrs)
    rows, cols = np.repeat(np.arange(n), nbrs.shape[1]), nbrs.ravel()
    ok = (cols >= 0) & (cols != rows)
    edges = np.unique(np.minimum(rows[ok], cols[ok]) * n + np.maximum(rows[ok], cols[ok]))
    return np.stack([edges // n, edges % n], axis=1)


def one_round(x: np.ndarray, before: bool) -> tuple[float, float, int]:
    """Wall and CPU seconds of one discover round on x as tracked objects of 3 views; classes made.
    before: with the kNN search and edge build as they were before the scale pass."""
    tracks = np.arange(len(x)) // 3
    buffer = UnseenBuffer(len(x), per_track=3)
    buffer.add(x, tracks)
    buffer.embeddings  # built outside the timing
    saved = discovery.knn, discovery._edges
    if before:
        discovery.knn, discovery._edges = knn_v1.knn, unique_edges
    try:
        t, c, out = timed(discover, Gate.empty(x.shape[1]), buffer, RULES, 0.75)
    finally:
        discovery.knn, discovery._edges = saved
    return t, c, len(out.new)


def views(base: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """n rows: each row of base (one object) seen 3 times, each view a little noise away."""
    rng = np.random.default_rng(seed)
    objects = base[:(n + 2) // 3]
    x = np.repeat(objects, 3, axis=0)[:n]
    return normalize(x + 0.1 / np.sqrt(x.shape[1]) * rng.normal(size=x.shape))


def bench_round(sizes: list[int], dims: list[int], embeddings: Path) -> None:
    print("\n## One discover round (empty gate; rows = objects of 3 views), seconds wall / CPU (new classes)")
    print("| rows | dim | ours | before the scale pass | load average |")
    print("|---|---|---|---|---|")
    for dim in dims:
        for n in sizes:
            base = real_rows(embeddings, n, dim) if embeddings.exists() else blob_rows(n, dim)
            x = views(base, n)
            ours, before = one_round(x, False), one_round(x, True)
            print(f"| {n} | {dim} | {ours[0]:.2f} / {ours[1]:.2f} ({ours[2]}) | {before[0]:.2f} / {before[1]:.2f} "
                  f"({before[2]}) | {os.getloadavg()[0]:.1f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--dims", default="384,1280")
    p.add_argument("--classes", default="10,100,1000,10000", help="'' skips the gate")
    p.add_argument("--budget", type=float, default=120.0, help="seconds above which today's code is projected")
    p.add_argument("--embeddings", type=Path, default=Path("/work/data/eval0/embeddings-efficientnet_lite0-128.npz"))
    p.add_argument("--lead-max", type=int, default=10**9, help="rows above which A (leidenalg) is not run")
    p.add_argument("--threads", type=int, default=0, help="faiss and BLAS threads (0: leave as set)")
    p.add_argument("--round-sizes", default="", help="rows of the whole-round comparison, e.g. 10000,100000")
    a = p.parse_args()
    if a.threads:
        from threadpoolctl import threadpool_limits
        faiss.omp_set_num_threads(a.threads)
        threadpool_limits(a.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} cores; faiss threads {faiss.omp_get_max_threads()}; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    if a.classes:
        bench_gate([int(v) for v in a.classes.split(",")])
    if a.round_sizes:
        bench_round([int(v) for v in a.round_sizes.split(",")], [int(v) for v in a.dims.split(",")], a.embeddings)
    if a.sizes:
        bench_clustering([int(v) for v in a.sizes.split(",")], [int(v) for v in a.dims.split(",")], a.budget,
                         a.embeddings, a.lead_max)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
