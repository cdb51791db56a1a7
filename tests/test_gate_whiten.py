"""Gate.whiten: distances after whitening with the memory's within-class covariance, radii from held-out members."""
from __future__ import annotations

import numpy as np
import pytest

from models.sddc import Gate, fit_whitening, load_gate, save_gate


def elongated(seed=0, n=30, dim=40):
    """Two classes 0.6 apart along axis 0; both spread with std 1.5 along axis 1 (a nuisance direction)
    and 0.1 elsewhere, so raw distances are dominated by the nuisance, whitened ones by the class.
    Few members for the dimension, as with real embeddings."""
    rng = np.random.default_rng(seed)
    scale = np.r_[0.1, 1.5, np.full(dim - 2, 0.1)].astype(np.float32)
    x = rng.normal(size=(2 * n, dim)).astype(np.float32) * scale
    y = np.repeat([0, 1], n)
    x[:, 0] += 0.6 * y
    return x, y


def gate_of(x, y, alpha=0.75):
    gate = Gate.empty(x.shape[1])
    for k in (0, 1):
        gate.add_members(f"c{k}", x[y == k], alpha)
    return gate


def test_whitening_matrix_inverts_the_shrunk_covariance():
    x, y = elongated()
    members = [x[y == 0], x[y == 1]]
    w = fit_whitening(members, 0.5)
    c = np.vstack([m - m.mean(0) for m in members]).astype(np.float64)
    s = c.T @ c / len(c)
    s = 0.5 * s + 0.5 * np.trace(s) / len(s) * np.eye(len(s))
    assert np.allclose(w @ s @ w, np.eye(len(s)), atol=1e-4) and np.allclose(w, w.T, atol=1e-5)
    with pytest.raises(ValueError, match="shrinkage"):
        fit_whitening(members, 0.0)


def test_whitened_gate_separates_what_the_nuisance_direction_hides(tmp_path):
    x, y = elongated(0)
    test, truth = elongated(1)
    plain, white = gate_of(x, y), gate_of(x, y)
    white.whiten(0.5, alpha=0.75)
    acc = {name: np.mean(g.classify(test)[0] == truth) for name, g in (("plain", plain), ("white", white))}
    assert acc["white"] > 0.6 and acc["white"] > acc["plain"] + 0.1
    # held-out radii: wider than the members' own whitened distances would give
    own = [np.quantile(np.linalg.norm(white.project(x[y == k]) - white.centroids[k], axis=1), 0.75) for k in (0, 1)]
    assert all(white.radii[k] > own[k] for k in (0, 1))
    # a class added later is measured in the same space; the transform survives save/load
    white.add_members("c2", x[y == 0] + np.float32(5.0), 0.75)
    assert (white.classify(x[y == 0] + np.float32(5.0))[0] == 2).mean() > 0.5
    save_gate(white, tmp_path / "m.npz")
    back = load_gate(tmp_path / "m.npz")
    assert np.array_equal(back.transform, white.transform)
    assert np.array_equal(back.classify(test)[0], white.classify(test)[0])
    save_gate(plain, tmp_path / "p.npz")
    assert load_gate(tmp_path / "p.npz").transform is None


def test_whiten_needs_members():
    gate = Gate.empty(4)
    gate.add("c", np.zeros(4, np.float32), 1.0, 10)  # no member sample
    with pytest.raises(ValueError, match="at least 4 member"):
        gate.whiten(0.5, 0.75)
