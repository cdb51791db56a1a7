#!/usr/bin/env python3
"""Gate calibration alternatives (SKZC Task 2, the protocol of evaluate.py) side by side with today's gate.

    python benchmarks/gate_calibration.py --data data/fmnist --cache out/embeddings-efficientnet_lite0-128.npz \
        [--seeds 0,1,2] [--alpha 0.75]

Per seed (seen classes drawn as evaluate.py --seen-fraction 0.5 does, half of each seen class as memory)
the gate is built from the memory and classifies the test images; printed: Sacc, Uacc and H per method
and seed, their mean over seeds, and whether a method raises mean H without lowering any seed. Methods:
the paper's per-class alpha-quantile radius (uncentred); one shared radius; held-out radii (each half of a class's
members measured against the other half's centroid); radii pooled (each class's radius shrunk towards
the median radius by a share, the gate's `pool`, config gate.radius_pool); radii shrunk by empirical
Bayes (each class's share from its own alpha-quantile's bootstrap variance against the spread of the
radii between classes: no share to choose); cosine (distances to the unit centroid); centred on the
seen classes' mean and normalized again (SimpleShot's CL2N; the gate's gate.centre, default on); and
whitening fitted on the class memory (pooled within-class covariance shrunk towards its mean variance)
with distances, centroids and radii in the whitened space, radii from the members' own distances or
held out (each half's distances under the whitening and centroid of the other half).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from evaluation.evaluate import choose_seen, scan, split
from evaluation.metrics import UNKNOWN, harmonic
from models.sddc import Gate, normalize

SHRINKS = (0.5, 0.8, 0.9, 0.95)  # whitening shrinkage towards the mean variance
POOLS = (0.25, 0.5, 0.75)         # share of the median radius in each class's radius


def gate_of(mem: np.ndarray, y: np.ndarray, names: list[str], alpha: float) -> Gate:
    gate = Gate.empty(mem.shape[1])
    for name in names:
        gate.add_members(name, mem[y == name], alpha)
    return gate


def centred(mem, y, names, alpha) -> Gate:
    """The gate's default since the fourth session (gate.centre): centred on the seen classes' mean (CL2N)."""
    gate = gate_of(mem, y, names, alpha)
    gate.centre_on_seen(alpha)
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


def fit_whitening(members: list[np.ndarray], shrink: float) -> np.ndarray:
    """(D, D) W = S^-1/2 for the pooled within-class covariance S of the classes' members (each (M_i, D)),
    shrunk towards its mean variance, (1 - shrink) S + shrink tr(S)/D I, so that it exists with fewer
    members than dimensions. Distances are then taken between rows of x @ W."""
    centred = np.vstack([m - m.mean(axis=0) for m in members]).astype(np.float64)  # (M, D)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)                        # vt: (r, D)
    var = sv ** 2 / len(centred)
    iso = shrink * max(float(var.sum()) / centred.shape[1], 1e-12)
    scale = ((1.0 - shrink) * var + iso) ** -0.5 - iso ** -0.5                      # (r,) on top of iso^-1/2
    return (np.eye(centred.shape[1]) * iso ** -0.5 + (vt.T * scale) @ vt).astype(np.float32)


def whitened_in_sample(mem, y, names, alpha, shrink) -> tuple[Gate, np.ndarray]:
    """Whitening fitted on all members, radii from the members' own (in-sample) whitened distances."""
    w = fit_whitening([mem[y == n] for n in names], shrink)
    return gate_of(mem @ w, y, names, alpha), w


def whitened_held_out(mem, y, names, alpha, shrink, seed) -> tuple[Gate, np.ndarray]:
    """Whitening fitted on all members; each radius the alpha-quantile of held-out distances: each half
    of a class's members to the other half's centroid, under the whitening fitted on the other halves."""
    halves = []
    for i, n in enumerate(names):
        m = mem[y == n][np.random.default_rng([seed, i]).permutation(int((y == n).sum()))]
        halves.append((m[:len(m) // 2], m[len(m) // 2:]))
    held: list[list[np.ndarray]] = [[] for _ in names]
    for f in (0, 1):
        w = fit_whitening([h[f] for h in halves], shrink)
        for i, h in enumerate(halves):
            held[i].append(np.linalg.norm((h[1 - f] - h[f].mean(axis=0)) @ w, axis=1))
    w = fit_whitening([mem[y == n] for n in names], shrink)
    gate = gate_of(mem @ w, y, names, alpha)
    gate.radii[:] = [np.quantile(np.concatenate(d), alpha) for d in held]
    return gate, w


def empirical_bayes(gate: Gate, mem, y, alpha, seed, boots: int = 200) -> Gate:
    """Each radius shrunk towards the precision-weighted mean radius by var_i / (var_i + tau^2): var_i the
    bootstrap variance of class i's alpha-quantile (its noise), tau^2 the variance of the radii between
    classes beyond that noise. Noisy radii move, well-measured ones stay: the share comes from the data."""
    rng = np.random.default_rng(seed)
    var = np.empty(len(gate))
    for i, n in enumerate(gate.names):
        d = np.linalg.norm(mem[y == n] - gate.centroids[i], axis=1)
        var[i] = np.var([np.quantile(rng.choice(d, len(d)), alpha) for _ in range(boots)])
    radii = gate.radii.astype(np.float64)
    tau2 = max(float(np.var(radii, ddof=1)) - float(var.mean()), 0.0) if len(radii) > 1 else 0.0
    share = var / (var + tau2) if tau2 > 0 else np.ones_like(var)
    target = float(np.sum(radii / (var + tau2)) / np.sum(1.0 / (var + tau2)))
    gate.radii[:] = (1.0 - share) * radii + share * target
    return gate


def score(gate: Gate, test: np.ndarray, true: np.ndarray, seen_mask: np.ndarray) -> tuple[float, float, float]:
    index = gate.classify(test)[0]
    pred = np.array([gate.names[i] if i >= 0 else UNKNOWN for i in index], object)
    sacc = float(np.mean(pred[seen_mask] == true[seen_mask]))
    uacc = float(np.mean(pred[~seen_mask] == UNKNOWN))
    return sacc, uacc, harmonic(sacc, uacc)


def methods(mem, y, names, alpha, seed) -> dict:
    """name -> (gate, transform applied to test embeddings)."""
    same = lambda z: z  # noqa: E731
    out = {"per-class radius (paper, pool 0)": (gate_of(mem, y, names, alpha), same),
           "centred on the seen classes (gate.centre)": (centred(mem, y, names, alpha), same),
           "shared radius": (shared_radius(gate_of(mem, y, names, alpha), mem, y, alpha), same),
           "held-out radii (split halves)": (held_out(gate_of(mem, y, names, alpha), mem, y, alpha, seed), same),
           "cosine (unit centroid)": (cosine(mem, y, names, alpha), same),
           "radii shrunk by empirical Bayes": (empirical_bayes(gate_of(mem, y, names, alpha), mem, y, alpha, seed),
                                               same)}
    for share in POOLS:  # the gate's own option (gate.radius_pool): radii shrunk towards the median radius
        gate = gate_of(mem, y, names, alpha)
        gate.pool = share
        out[f"radii pooled {share} (gate.radius_pool)"] = (gate, same)
    gate, w = whitened_in_sample(mem, y, names, alpha, SHRINKS[1])
    out[f"whiten {SHRINKS[1]}, in-sample radii"] = (gate, lambda z, w=w: z @ w)
    for shrink in SHRINKS:
        gate, w = whitened_held_out(mem, y, names, alpha, shrink, seed)
        out[f"whiten {shrink}, held-out radii"] = (gate, lambda z, w=w: z @ w)
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
    base = [h for _, _, h in table["per-class radius (paper, pool 0)"]]
    print(f"alpha {args.alpha}; Sacc/Uacc/H per seed {seeds}; mean H; 'keeps' = raises mean H, lowers no seed")
    for name, rows in table.items():
        hs = [h for _, _, h in rows]
        keeps = np.mean(hs) > np.mean(base) and all(h >= b for h, b in zip(hs, base))
        cells = "  ".join(f"{s:.3f}/{u:.3f}/{h:.3f}" for s, u, h in rows)
        print(f"{name:42s} {cells}  mean H {np.mean(hs):.3f}{'  keeps' if keeps else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
