"""kNN graph rows: exact search against brute force, the approximate path's recall, padding, determinism."""
from __future__ import annotations

import numpy as np
import pytest

from models.knn import knn
from models.sddc import normalize


def blobs(n: int, dim: int, centres: int, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    return normalize(c[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, dim)))


def brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, 1)


def test_exact_matches_brute_force():
    x = blobs(300, 16, 5, 0.5)
    nbrs, sims = knn(x, 7)
    want_nbrs, want_sims = brute_force(x, 7)
    assert nbrs.shape == (300, 7) and nbrs.dtype == np.int64 and sims.dtype == np.float32
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    assert (np.diff(sims, axis=1) <= 0).all()
    assert (nbrs != np.arange(300)[:, None]).all()
    same = [len(set(a) & set(b)) for a, b in zip(nbrs, want_nbrs)]
    assert np.mean(same) > 6.9  # only float near-ties may swap


def test_approximate_recall_on_clustered_data():
    x = blobs(6000, 96, 40, 0.6, seed=1)
    nbrs, sims = knn(x, 15, exact=False)
    want, _ = knn(x, 15, exact=True)
    recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(nbrs, want)])
    assert recall > 0.8
    assert (nbrs >= 0).all() and (nbrs != np.arange(6000)[:, None]).all()
    # similarities returned are the exact ones of the pairs returned, most similar first
    np.testing.assert_allclose(sims, np.einsum("nd,nkd->nk", x, x[nbrs]), atol=1e-5)
    assert (np.diff(sims, axis=1) <= 0).all()


@pytest.mark.parametrize("n", [0, 1, 2, 4])
def test_fewer_rows_than_k_are_padded(n):
    x = blobs(n, 8, 2, 0.3) if n else np.zeros((0, 8), np.float32)
    nbrs, sims = knn(x, 5)
    assert nbrs.shape == sims.shape == (n, 5)
    real = max(n - 1, 0)
    assert (nbrs[:, real:] == -1).all() and np.isneginf(sims[:, real:]).all()
    for i in range(n):
        assert sorted(nbrs[i, :real]) == [j for j in range(n) if j != i]


def test_exact_copies_never_list_the_row_itself():
    x = np.repeat(blobs(3, 8, 3, 0.1), 10, axis=0)  # 3 rows, 10 copies each
    nbrs, sims = knn(x, 12)
    assert (nbrs != np.arange(30)[:, None]).all()
    assert (nbrs[:, :9] // 10 == np.arange(30)[:, None] // 10).all()  # the 9 other copies come first
    np.testing.assert_allclose(sims[:, :9], 1.0, atol=1e-5)


def test_approximate_path_is_deterministic_per_seed():
    x = blobs(3000, 32, 20, 0.7, seed=2)
    a, b = knn(x, 10, seed=3, exact=False), knn(x, 10, seed=3, exact=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k must be"):
        knn(blobs(5, 4, 1, 0.1), 0)


@pytest.mark.parametrize("ties", [False, True])
def test_top_columns_are_each_rows_largest(ties):
    from models.knn import _top_columns
    rng = np.random.default_rng(4)
    sims = rng.normal(size=(30, 50)).astype(np.float32)
    if ties:
        sims = np.round(sims, 1)  # many equal values at the cut
    top = _top_columns(sims, 7)
    assert top.shape == (30, 7)
    for row, cols in zip(sims, top):
        assert len(set(cols)) == 7
        np.testing.assert_array_equal(np.sort(row[cols]), np.sort(row)[-7:])  # the 7 largest values
    assert _top_columns(sims[:, :5], 7).shape == (30, 5)  # fewer columns than asked: all of them


def test_graph_edges_are_each_undirected_pair_once():
    from models.discovery import _edges
    nbrs = np.array([[1, 2], [0, -1], [1, 2], [3, 3]])  # 0-1 both ways, 2-2 and 3-3 self, -1 none
    np.testing.assert_array_equal(_edges(nbrs), [[0, 1], [0, 2], [1, 2]])
    assert _edges(np.full((4, 2), -1)).shape == (0, 2)
