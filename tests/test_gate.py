"""SDDC gate math against hand computation, embedding sets, and the class memory file."""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.sddc import UNSEEN, Gate, centroid_and_radius, load_gate, normalize, save_gate
from stream.wire import decode, encode


def test_centroid_and_radius_by_hand():
    members = np.array([[0, 0], [4, 0], [0, 3]], np.float32)
    centroid, radius = centroid_and_radius(members, 0.75)
    np.testing.assert_allclose(centroid, [4 / 3, 1.0], rtol=1e-6)
    # sorted distances 5/3, sqrt(52)/3, sqrt(73)/3; the 0.75-quantile sits halfway between the last two
    assert radius == pytest.approx((math.sqrt(52) / 3 + math.sqrt(73) / 3) / 2, rel=1e-6)
    assert centroid_and_radius(members, 0.0)[1] == pytest.approx(5 / 3, rel=1e-6)
    assert centroid_and_radius(members, 1.0)[1] == pytest.approx(math.sqrt(73) / 3, rel=1e-6)
    with pytest.raises(ValueError):
        centroid_and_radius(members, 1.5)


def two_classes(set_size: int = 7) -> Gate:
    gate = Gate.empty(2, set_size)
    gate.add_members("a", np.array([[0, 0], [4, 0], [0, 3]], np.float32), 0.75)
    gate.add("b", np.array([10, 10], np.float32), 1.0, 5)
    return gate


def test_classify_by_hand():
    gate = two_classes()
    index, distance = gate.classify(np.array([[1, 1], [10, 10.5], [10, 11.5], [30, 30]], np.float32))
    assert gate.labels(index) == ["a", "b", UNSEEN, UNSEEN]
    np.testing.assert_allclose(distance[:3], [1 / 3, 0.5, 1.5], rtol=1e-5)
    assert distance[3] == pytest.approx(math.hypot(20, 20), rel=1e-5)  # nearest centroid, b


def test_pooled_radii_by_hand():
    gate = Gate.empty(2)
    for i, r in enumerate((1.0, 2.0, 4.0)):
        gate.add(f"c{i}", np.array([10.0 * i, 0], np.float32), r, 5)
    np.testing.assert_allclose(gate.effective_radii(), [1.0, 2.0, 4.0])  # the paper's gate: pool 0
    point = np.array([[1.2, 0], [23.5, 0]], np.float32)  # 1.2 from c0 (R 1), 3.5 from c2 (R 4)
    assert gate.labels(gate.classify(point)[0]) == [UNSEEN, "c2"]
    gate.pool = 0.5  # each radius halfway to the median radius 2
    np.testing.assert_allclose(gate.effective_radii(), [1.5, 2.0, 3.0])
    assert gate.labels(gate.classify(point)[0]) == ["c0", UNSEEN]
    assert gate.radii.tolist() == [1.0, 2.0, 4.0]  # the classes' own radii are kept as they are
    gate.pool = 1.5
    with pytest.raises(ValueError, match="radius pool"):
        gate.classify(point)


def test_empty_gate_calls_everything_unseen():
    index, distance = Gate.empty(4).classify(normalize(np.ones((3, 4))))
    assert (index == -1).all() and np.isinf(distance).all()
    index, distance = two_classes().classify(np.zeros((0, 2), np.float32))
    assert index.shape == (0,) and distance.shape == (0,)


def test_embedding_sets_fill_up_to_set_size():
    gate = Gate.empty(2, set_size=3)
    for i in range(7):
        gate.add(f"c{i}", np.array([i, 0], np.float32), 0.1, 1)
    assert gate.set_ids.tolist() == [0, 0, 0, 1, 1, 1, 2]


def test_each_set_offers_its_nearest_class():
    # a is nearest but the point lies outside a's radius; b (farther) contains it.
    gate = Gate.empty(2, set_size=1)
    gate.add("a", np.array([0, 0], np.float32), 0.1, 3)
    gate.add("b", np.array([1, 0], np.float32), 2.0, 3)
    point = np.array([[0.3, 0]], np.float32)
    assert gate.labels(gate.classify(point)[0]) == ["b"]  # separate sets: b's set answers
    gate.set_ids[:] = 0
    assert gate.labels(gate.classify(point)[0]) == [UNSEEN]  # one set: nearest (a) says no


def test_grow_recomputes_from_members():
    gate = two_classes()
    gate.grow(0, np.array([[10, 0]], np.float32), 0.75, keep=3)
    np.testing.assert_allclose(gate.centroids[0], np.mean([[4, 0], [0, 3], [10, 0]], axis=0), rtol=1e-6)
    assert gate.sizes[0] == 4 and len(gate.members[0]) == 3


def test_memory_round_trip(tmp_path):
    gate = two_classes(set_size=1)
    path = tmp_path / "sub" / "memory.npz"
    save_gate(gate, path)
    back = load_gate(path)
    assert back.names == gate.names and back.set_size == 1
    for name in ("centroids", "radii", "sizes", "set_ids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(gate, name))
    np.testing.assert_allclose(back.members[0], gate.members[0], atol=1e-2)  # stored as float16
    assert back.members[1].shape == (0, 2)


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "memory.npz"
    save_gate(two_classes(), path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_gate(Gate.empty(2), path)
    assert load_gate(path).names == ["a", "b"]


def test_corrupt_memory_file_is_a_clear_error(tmp_path):
    path = tmp_path / "memory.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="not readable"):
        load_gate(path)


def random_gate(rng: np.random.Generator, k: int, dim: int, set_size: int) -> Gate:
    """k classes around a few shared directions, so sets hold close rivals; some exact duplicates."""
    gate = Gate.empty(dim, set_size)
    base = normalize(rng.normal(size=(max(1, k // 3), dim)))
    for i in range(k):
        spread = rng.choice([0.05, 0.3, 1.0])
        gate.add_members(f"c{i}", normalize(base[i % len(base)] + spread * rng.normal(size=(5, dim))), 0.75)
    if k > 2:
        gate.centroids[k - 1] = gate.centroids[0]  # a tie across or within sets
    return gate


@pytest.mark.parametrize("k,dim,set_size,shuffle", [
    (1, 8, 7, False), (2, 2, 1, False), (7, 16, 7, False), (30, 64, 3, True), (60, 384, 7, False),
    (200, 129, 7, True)])
def test_classify_equals_the_direct_computation(k, dim, set_size, shuffle):
    from benchmarks.baseline.sddc_v1 import classify as direct  # the pre-issue-8 code, (N, K, D) temporary
    rng = np.random.default_rng(k)
    for trial in range(20):
        gate = random_gate(rng, k, dim, set_size)
        if shuffle:
            rng.shuffle(gate.set_ids)
        base = gate.centroids[rng.integers(0, k, 25)]
        x = normalize(base + rng.choice([0.05, 0.3, 1.0]) * rng.normal(size=base.shape))
        x[0] = gate.centroids[0]  # exactly on a centroid
        gate.radii[-1] = np.linalg.norm(x[1:2, None] - gate.centroids[None, -1:], axis=2)[0, 0]  # exactly on a radius
        if trial % 5 == 0:
            gate.radii[:] = trial % 2 * 10.0  # everything outside / everything inside
        gate.pool = (0.0, 0.5)[trial % 2 if trial % 5 else 0]  # pooled radii: the same rule on other radii
        if gate.pool:
            x[1] = gate.centroids[-1] + (x[1] - gate.centroids[-1]) * gate.effective_radii()[-1] / gate.radii[-1]
        index, distance = gate.classify(x)
        want_index, want_distance = direct(gate.centroids, gate.effective_radii(), gate.set_ids, x)
        np.testing.assert_array_equal(index, want_index)
        np.testing.assert_array_equal(distance, want_distance)  # bit for bit
        assert distance.dtype == np.float32 and index.dtype == np.int64


def test_classify_follows_every_class_change():
    # the gate keeps centroid norms between calls; each change must show in the next answer
    from benchmarks.baseline.sddc_v1 import classify as direct
    rng = np.random.default_rng(7)
    gate = random_gate(rng, 30, 32, 4)
    x = normalize(gate.centroids[rng.integers(0, 30, 40)] + 0.3 * rng.normal(size=(40, 32)))

    def same():
        got, want = gate.classify(x), direct(gate.centroids, gate.radii, gate.set_ids, x)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])

    same()
    gate.grow(3, normalize(x[:5] + 0.01), 0.75, 256)
    same()
    gate.merge("c5", "c6", 0.75, 256)
    same()
    gate.members[7] = np.zeros((0, 32), np.float32)  # no members: merge moves the centroid in place
    gate.merge("c8", "c7", 0.75, 256)
    same()
    gate.add_members("new", normalize(x[10:14]), 0.75)
    same()
    gate.remove("c0")
    same()
    rng.shuffle(gate.set_ids)  # in place
    same()
    gate.radii[:] = 10.0  # in place: everything inside
    same()


def test_centroids_cannot_be_edited_behind_the_gates_back():
    gate = random_gate(np.random.default_rng(3), 10, 8, 7)
    gate.classify(gate.centroids[:2].copy())
    with pytest.raises(ValueError, match="read-only"):
        gate.centroids[0] = 0.0  # would leave the kept norms stale
    gate.grow(0, gate.centroids[:1].copy(), 0.75, 256)  # the class methods may
    assert gate.classify(gate.centroids[:1].copy())[0].tolist() == [0]


def shared_direction_classes() -> tuple[Gate, np.ndarray, np.ndarray]:
    """Two classes whose embeddings share one large common direction (as post-ReLU features do) and
    differ in a small one (+1 / -1); members (M, 3) each."""
    rng = np.random.default_rng(0)
    a = normalize(np.c_[np.full(20, 10.0), 1 + 0.05 * rng.normal(size=20), 0.3 * rng.normal(size=20)])
    b = normalize(np.c_[np.full(20, 10.0), -1 + 0.05 * rng.normal(size=20), 0.3 * rng.normal(size=20)])
    gate = Gate.empty(3)
    gate.add_members("a", a, 0.75)
    gate.add_members("b", b, 0.75)
    return gate, a, b


def test_centring_on_the_seen_classes_ignores_their_shared_direction():
    gate, a, b = shared_direction_classes()
    probe = normalize(np.float32([[10, 2, 0], [10, -2, 0]]))  # a and b, further from the shared direction
    assert gate.labels(gate.classify(probe)[0]) == ["unseen", "unseen"]  # uncentred: outside both radii
    assert gate.centre_on_seen(0.75)
    np.testing.assert_allclose(gate.center, (a.mean(0) + b.mean(0)) / 2, rtol=1e-6)
    for i, m in enumerate((a, b)):  # refitted in the centred space
        c, r = centroid_and_radius(normalize(m - gate.center), 0.75)
        np.testing.assert_allclose(gate.centroids[i], c, rtol=1e-5)
        assert gate.radii[i] == pytest.approx(r, rel=1e-5)
    assert gate.labels(gate.classify(probe)[0]) == ["a", "b"]
    np.testing.assert_array_equal(gate.members[0], a)  # members stay as given: discovery's space
    gate.add_members("c", normalize(np.float32([[10, 0, 3], [10, 0, 2.5]])), 1.0)  # joins in the centred space
    assert gate.labels(gate.classify(normalize(np.float32([[10, 0, 2.8]])))[0]) == ["c"]


def test_centring_needs_two_seen_classes_with_members():
    gate, a, _ = shared_direction_classes()
    gate.discovered[1] = True  # one seen class: its own mean would be its centroid
    assert gate.centre_on_seen(0.75) and gate.center is None
    np.testing.assert_allclose(gate.centroids[0], a.mean(0), rtol=1e-6)
    gate, _, _ = shared_direction_classes()
    gate.add("bare", normalize(np.float32([[0, 1, 1]]))[0], 0.1, 3)  # no members: cannot be refitted
    before = gate.centroids.copy()
    assert not gate.centre_on_seen(0.75)
    assert gate.center is None
    np.testing.assert_array_equal(gate.centroids, before)


def test_memory_keeps_its_centre(tmp_path):
    gate, _, _ = shared_direction_classes()
    gate.centre_on_seen(0.75)
    save_gate(gate, tmp_path / "m.npz")
    back = load_gate(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.center, gate.center)
    probe = normalize(np.float32([[10, 2, 0], [10, -2, 0], [0, 1, 1]]))
    np.testing.assert_array_equal(back.classify(probe)[0], gate.classify(probe)[0])
    save_gate(two_classes(), tmp_path / "old.npz")  # written without a centre, as before it existed
    assert load_gate(tmp_path / "old.npz").center is None
    with np.load(tmp_path / "m.npz") as z:
        bad = {k: z[k] for k in z.files}
    np.savez(tmp_path / "bad.npz", **{**bad, "center": np.float32([1, 2])})
    with pytest.raises(ValueError, match="centre of shape"):
        load_gate(tmp_path / "bad.npz")


def test_the_gate_stage_classifies_as_the_cluster_stages_memory_does():
    from stages.cluster import snapshot
    from stages.gate import apply_update
    gate, _, _ = shared_direction_classes()
    gate.centre_on_seen(0.75)
    update = decode(encode(snapshot(gate, 4)))  # the class update as the gate stage receives it
    seen_by_stage = apply_update(update, gate.set_size, 0.0)
    probe = normalize(np.float32([[10, 2, 0], [10, -2, 0], [0, 1, 1], [10, 0, 0]]))
    np.testing.assert_array_equal(seen_by_stage.classify(probe)[0], gate.classify(probe)[0])
    assert seen_by_stage.labels(seen_by_stage.classify(probe)[0])[:2] == ["a", "b"]  # fails if the centre is lost
