#!/usr/bin/env python3
"""Gate calibration alternatives (SKZC Task 2, the protocol of evaluate.py) side by side with today's gate.

    python benchmarks/gate_calibration.py --data data/fmnist --cache out/embeddings-efficientnet_lite0-128.npz \
        [--seeds 0,1,2] [--alpha 0.75]

Per seed (seen classes drawn as evaluate.py --seen-fraction 0.5 does, half of each seen class as memory)
the gate is built from the memory and classifies the test images; printed: Sacc, Uacc and H per method
and seed, their mean over seeds, and whether a method raises mean H without lowering any seed. Methods:
today's per-class alpha-quantile radius; one shared radius; held-out radii (each half of a class's
members measured against the other half's centroid); cosine (distances to the unit centroid); and
whitening fitted on the class memory (pooled within-class or total covariance, shrunk towards its
mean variance by lambda) with distances, centroids and radii in the whitened space.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval_metrics import UNKNOWN, harmonic  # noqa: E402
from evaluate import choose_seen, scan, split  # noqa: E402
from models.sddc import Gate, centroid_and_radius, normalize  # noqa: E402


def gate_of(mem: np.ndarray, y: np.ndarray, names: list[str], alpha: float) -> Gate:
    gate = Gate.empty(mem.shape[1])
    for name in names:
        gate.add_members(name, mem[y == name], alpha)
    return gate


def shared_radius(gate: Gate, mem, y, alpha) -> Gate:
    d = np.concatenate([np.linalg.norm(mem[y == n] - gate.centroids[i], axis=1) for i, n in enumerate(gate.names)])
    gate.radii[:] = np.quantile(d, alpha)
    return gate


def held_out(gate: Gate, mem, y, alpha, seed) -> Gate:
    """Radius from distances of each half of the members to the centroid of the other half."""
    for i, n in enumerate(gate.names):
        m = mem[y == n][np.random.default_rng([seed, i]).permutation(int((y == n).sum()))]
        a, b = m[:len(m) // 2], m[len(m) // 2:]
        d = np.r_[np.linalg.norm(a - b.mean(0), axis=1), np.linalg.norm(b - a.mean(0), axis=1)]
        gate.radii[i] = np.quantile(d, alpha)
    return gate


def cosine(mem, y, names, alpha) -> Gate:
    gate = Gate.empty(mem.shape[1])
    for n in names:
        c = normalize(mem[y == n].mean(0)[None])[0]
        gate.add(n, c, float(np.quantile(np.linalg.norm(mem[y == n] - c, axis=1), alpha)), int((y == n).sum()))
    return gate


def whitening(mem: np.ndarray, y: np.ndarray, shrink: float, within: bool) -> np.ndarray:
    """(D, D) symmetric W = S^-1/2 of the memory's covariance S (pooled within-class if `within`),
    shrunk as (1 - shrink) S + shrink * mean variance * I; then distances are taken on x @ W."""
    centred = mem - (np.stack([mem[y == n].mean(0) for n in y]) if within else mem.mean(0))
    s = centred.T @ centred / len(mem)
    s = (1 - shrink) * s + shrink * np.trace(s) / len(s) * np.eye(len(s))
    w, v = np.linalg.eigh(s)
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T


def score(gate: Gate, test: np.ndarray, true: np.ndarray, seen_mask: np.ndarray) -> tuple[float, float, float]:
    index = gate.classify(test)[0]
    pred = np.array([gate.names[i] if i >= 0 else UNKNOWN for i in index], object)
    sacc = float(np.mean(pred[seen_mask] == true[seen_mask]))
    uacc = float(np.mean(pred[~seen_mask] == UNKNOWN))
    return sacc, uacc, harmonic(sacc, uacc)


def methods(mem, y, names, alpha, seed) -> dict:
    """name -> (gate, transform applied to test embeddings)."""
    same = lambda z: z  # noqa: E731
    out = {"per-class radius (today)": (gate_of(mem, y, names, alpha), same),
           "shared radius": (shared_radius(gate_of(mem, y, names, alpha), mem, y, alpha), same),
           "held-out radii (split halves)": (held_out(gate_of(mem, y, names, alpha), mem, y, alpha, seed), same),
           "cosine (unit centroid)": (cosine(mem, y, names, alpha), same)}
    for within in (True, False):
        for shrink in (0.1, 0.3, 0.5, 0.8):
            w = whitening(mem, y, shrink, within)
            kind = "within-class" if within else "total"
            out[f"whiten {kind} lambda {shrink}"] = (gate_of(mem @ w, y, names, alpha), lambda z, w=w: z @ w)
            out[f"whiten {kind} lambda {shrink}, unit rows"] = (
                gate_of(normalize(mem @ w), y, names, alpha), lambda z, w=w: normalize(z @ w))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--cache", required=True, help="embedding cache .npz written by evaluate.py")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--alpha", type=float, default=0.75)
    args = p.parse_args(argv)
    paths, labels = scan(Path(args.data))
    with np.load(args.cache, allow_pickle=False) as z:
        known = dict(zip(z["paths"].tolist(), z["embeddings"]))
    missing = [q for q in paths if str(q.resolve()) not in known]
    if missing:
        print(f"gate_calibration: {len(missing)} images are not in {args.cache}; run evaluate.py on --data first",
              file=sys.stderr)
        return 2
    x = normalize(np.stack([known[str(q.resolve())] for q in paths]))
    seeds = [int(s) for s in args.seeds.split(",")]
    table: dict[str, list] = {}
    for seed in seeds:
        seen = choose_seen(sorted(set(labels)), None, 0.5, seed)
        memory = split(labels, seen, 0.5, seed)
        mem, y, test, true = x[memory], labels[memory], x[~memory], labels[~memory]
        for name, (gate, transform) in methods(mem, y, seen, args.alpha, seed).items():
            table.setdefault(name, []).append(score(gate, transform(test), true, np.isin(true, seen)))
    base = [h for _, _, h in table["per-class radius (today)"]]
    print(f"alpha {args.alpha}; Sacc/Uacc/H per seed {seeds}; mean H; 'keeps' = raises mean H, lowers no seed")
    for name, rows in table.items():
        hs = [h for _, _, h in rows]
        keeps = np.mean(hs) > np.mean(base) and all(h >= b for h, b in zip(hs, base))
        cells = "  ".join(f"{s:.3f}/{u:.3f}/{h:.3f}" for s, u, h in rows)
        print(f"{name:42s} {cells}  mean H {np.mean(hs):.3f}{'  keeps' if keeps else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
