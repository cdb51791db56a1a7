"""Label-free clustering (KCH) on seeded synthetic embeddings, and the cluster stage's discovery step."""
from __future__ import annotations

import numpy as np

from models.kch import deduplicate, knn_clusters
from models.sddc import Gate, normalize
from stages.cluster import UnseenBuffer, discover
from stages.config import ClusterSettings
from stream.messages import UnseenBatch

DIM = 32


def blobs(n_per: int, centers: int, spread: float = 0.4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random centres; spread is the noise norm (cosine to centre ~ 1/sqrt(1+spread^2))."""
    rng = np.random.default_rng(seed)
    c = normalize(rng.normal(size=(centers, DIM)))
    x = np.vstack([normalize(c[i] + spread * rng.normal(size=(n_per, DIM)) / np.sqrt(DIM)) for i in range(centers)])
    return x, np.repeat(np.arange(centers), n_per)


def test_knn_clusters_recover_seeded_blobs_and_leave_noise_out():
    x, truth = blobs(30, 3)
    noise = normalize(np.random.default_rng(1).normal(size=(20, DIM)))
    labels = knn_clusters(np.vstack([x, noise]), k=10, min_similarity=0.6, min_size=8)
    assert set(labels[:90]) - {-1} == {0, 1, 2}
    for c in range(3):  # each found cluster is one blob, (nearly) whole
        assert len(set(truth[labels[:90] == c])) == 1 and (labels[:90] == c).sum() >= 27
    assert (labels[90:] == -1).mean() >= 0.9


def test_knn_clusters_respect_min_size_and_min_groups():
    x, _ = blobs(6, 2)
    assert (knn_clusters(x, k=5, min_similarity=0.5, min_size=8) == -1).all()
    x, _ = blobs(20, 1)
    one_track = np.zeros(20, np.int64)
    assert (knn_clusters(x, 10, 0.5, 8, groups=one_track, min_groups=2) == -1).all()
    assert (knn_clusters(x, 10, 0.5, 8, groups=np.arange(20) % 3, min_groups=2) == 0).all()


def test_deduplicate_keeps_one_of_near_copies():
    rng = np.random.default_rng(0)
    base = normalize(rng.normal(size=(3, DIM)))
    x = normalize(np.repeat(base, 10, axis=0) + 1e-3 * rng.normal(size=(30, DIM)))
    assert deduplicate(x, 0.99).tolist() == [0, 10, 20]
    assert deduplicate(np.zeros((0, DIM), np.float32), 0.99).tolist() == []


def settings(**kw) -> ClusterSettings:
    return ClusterSettings(**{"k": 10, "min_similarity": 0.6, "dedup_similarity": 0.99, "min_size": 8, **kw})


def buffer_of(x: np.ndarray) -> UnseenBuffer:
    buf = UnseenBuffer(capacity=1000)
    buf.add(UnseenBatch("t", 0, x.astype(np.float32), np.full(len(x), -1, np.int64)))
    return buf


def test_one_object_repeated_does_not_make_a_class():
    rng = np.random.default_rng(2)
    one = normalize(np.repeat(rng.normal(size=(1, DIM)), 200, axis=0) + 1e-4 * rng.normal(size=(200, DIM)))
    gate = Gate.empty(DIM)
    assert discover(gate, buffer_of(one), settings(), alpha=0.75) == ([], [])
    assert len(gate) == 0


def test_discover_adds_new_classes_and_grows_known_ones():
    x, truth = blobs(40, 2, seed=3)
    gate = Gate.empty(DIM)
    new, grown = discover(gate, buffer_of(x[truth == 0][:20]), settings(), alpha=0.75)
    assert new == ["novel-1"] and grown == []
    buf = buffer_of(np.vstack([x[truth == 0][20:], x[truth == 1]]))
    new, grown = discover(gate, buf, settings(), alpha=0.75)
    assert new == ["novel-2"]  # blob 0 again must not become a class of its own
    assert grown in ([], ["novel-1"])
    index, _ = gate.classify(x)
    assert (index[truth == 1] == 1).mean() > 0.6 and (index[truth == 0] == 0).mean() > 0.6
    assert (gate.classify(buf.embeddings)[0] == -1).all()  # what a class covers leaves the buffer


def test_buffer_keeps_the_newest_rows():
    buf = UnseenBuffer(capacity=5)
    for i in range(3):
        buf.add(UnseenBatch("t", i, np.full((3, 2), i, np.float32), np.full(3, i, np.int64)))
    assert len(buf) == 5 and buf.tracks.tolist() == [1, 1, 2, 2, 2]


def test_buffer_keeps_a_few_distinct_views_per_track():
    buf = UnseenBuffer(capacity=100, per_track=3, similar=0.99)
    rng = np.random.default_rng(4)
    views = normalize(rng.normal(size=(6, DIM)))
    same = np.repeat(views[:1], 5, axis=0)  # one view seen five times
    buf.add(UnseenBatch("t", 0, same.astype(np.float32), np.full(5, 7, np.int64)))
    assert len(buf) == 1
    buf.add(UnseenBatch("t", 1, views[1:].astype(np.float32), np.full(5, 7, np.int64)))
    assert len(buf) == 3 and np.allclose(buf.embeddings, views[3:])  # the track's newest three
    buf.add(UnseenBatch("t", 2, views[:2].astype(np.float32), np.full(2, -1, np.int64)))
    assert len(buf) == 5  # untracked rows are not capped


def test_new_class_needs_several_tracks():
    x, _ = blobs(30, 1, seed=5)
    gate = Gate.empty(DIM)
    for tracks, found in ((np.repeat(np.arange(2), 15), []), (np.arange(30) % 3, ["novel-1"])):
        buf = UnseenBuffer(capacity=1000)
        buf.add(UnseenBatch("t", 0, x.astype(np.float32), tracks.astype(np.int64)))
        assert discover(gate, buf, settings(min_tracks=3), alpha=0.75)[0] == found
