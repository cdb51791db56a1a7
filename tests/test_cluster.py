"""Label-free discovery (models/discovery.py) on seeded synthetic embeddings: the stream rule, pinned."""
from __future__ import annotations

import dataclasses

import numpy as np

from models.discovery import DiscoveryRules, communities, discover, graph_k, objects
from models.unseen import UnseenBuffer
from models.knn import knn
from models.sddc import Gate, normalize

DIM = 32
RULES = DiscoveryRules()


def blobs(n_per: int, centers: int, spread: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random centres; spread is the noise norm relative to the centre."""
    rng = np.random.default_rng(seed)
    c = normalize(rng.normal(size=(centers, DIM)))
    x = np.vstack([normalize(c[i] + spread * rng.normal(size=(n_per, DIM)) / np.sqrt(DIM)) for i in range(centers)])
    return x, np.repeat(np.arange(centers), n_per)


def jitter(x: np.ndarray, n: int, seed: int, scale: float = 1e-3) -> np.ndarray:
    """n near-identical copies of each row of x, as consecutive frames of one object."""
    rng = np.random.default_rng(seed)
    return normalize(np.repeat(x, n, axis=0) + scale * rng.normal(size=(len(x) * n, x.shape[1])))


def buffer_of(x: np.ndarray, tracks: np.ndarray | None = None) -> UnseenBuffer:
    buf = UnseenBuffer(capacity=100_000)
    buf.add(x.astype(np.float32), np.full(len(x), -1, np.int64) if tracks is None else tracks.astype(np.int64))
    return buf


def test_communities_recover_seeded_blobs_without_any_threshold():
    for spread in (0.3, 0.8):  # tight and loose blobs: no similarity scale to tune
        x, truth = blobs(40, 4, spread, seed=1)
        comm = communities(x, k=15, resolution=0.5)
        for c in range(4):  # each blob lands (nearly whole) in one community of its own
            values, counts = np.unique(comm[truth == c], return_counts=True)
            assert counts.max() >= 36 and (comm[truth != c] == values[counts.argmax()]).sum() <= 2


def test_one_blob_stays_one_community_at_the_default_resolution():
    for n, spread in ((30, 0.5), (300, 2.0)):  # 1.0 would cut it into 3-8 pieces
        x, _ = blobs(n, 1, spread, seed=2)
        assert len(np.unique(communities(x, RULES.k, RULES.resolution))) == 1


def test_communities_small_and_empty_inputs():
    assert communities(np.zeros((0, DIM), np.float32), 15, 1.0).tolist() == []
    assert communities(normalize(np.ones((2, DIM))), 15, 1.0).tolist() == [0, 0]


def test_objects_join_re_tracked_look_alikes_but_not_distinct_things():
    rng = np.random.default_rng(2)
    thing, other = normalize(rng.normal(size=(2, DIM)))
    lingering = jitter(thing[None], 12, seed=3)   # one object on four broken tracks
    two = jitter(np.stack([other, normalize(other[None] + 0.3 * rng.normal(size=(1, DIM)))[0]]), 3, seed=4)  # two look-alikes
    x = np.vstack([lingering, two])
    tracks = np.concatenate([np.repeat([10, 11, 12, 13], 3), np.repeat([20, 21], 3)])
    obj = objects(x, tracks, *knn(x, 15))
    assert len(np.unique(obj[:12])) == 1
    assert len(np.unique(obj[12:])) == 2 and not set(obj[:12]) & set(obj[12:])
    assert len(np.unique(objects(x, np.full(len(x), -1), *knn(x, 15)))) == len(x)  # untracked: each its own


def test_a_lingering_object_never_makes_a_class():
    rng = np.random.default_rng(5)
    one = jitter(normalize(rng.normal(size=(1, DIM))), 60, seed=6)  # 20 broken tracks of 3 frames
    gate = Gate.empty(DIM)
    out = discover(gate, buffer_of(one, np.repeat(np.arange(20), 3)), RULES, alpha=0.75)
    assert not out and len(gate) == 0


def test_near_duplicate_frames_of_one_track_never_make_a_class():
    rng = np.random.default_rng(7)
    gate = Gate.empty(DIM)
    assert not discover(gate, buffer_of(jitter(normalize(rng.normal(size=(1, DIM))), 200, 8),
                                        np.zeros(200, np.int64)), RULES, 0.75)


def test_a_new_class_needs_several_tracks():
    # two distinct objects, each on its own track (3 views kept each: min_size 6, min_objects 2 met)
    x, _ = blobs(2, 1, seed=9)
    views, tracks = jitter(x, 15, seed=9), np.repeat(np.arange(2), 15)
    for min_tracks, made in ((3, 0), (2, 1)):
        gate = Gate.empty(DIM)
        discover(gate, buffer_of(views, tracks), dataclasses.replace(RULES, min_tracks=min_tracks), 0.75)
        assert len(gate) == made, min_tracks


def test_a_class_found_in_round_one_is_grown_not_duplicated_in_round_two():
    x, truth = blobs(60, 2, seed=3)
    a, b = x[truth == 0], x[truth == 1]
    gate = Gate.empty(DIM)
    out = discover(gate, buffer_of(a[:30], np.arange(30)), RULES, 0.75)
    assert out.new == ["novel-1"] and gate.discovered == [True]
    buf = buffer_of(np.vstack([a[30:], b]), np.arange(100, 190))
    out = discover(gate, buf, RULES, 0.75)
    assert out.new == ["novel-2"] and out.grown == ["novel-1"] and not out.merged
    assert len(out.assigned["novel-2"]) >= 50  # rows of blob 0 either joined novel-1 or it covered them already
    index, _ = gate.classify(x)
    assert (index[truth == 0] == 0).mean() > 0.6 and (index[truth == 1] == 1).mean() > 0.6
    assert len(buf) <= 15  # what joined a class left the buffer


def test_two_fragments_of_one_class_merge():
    x, _ = blobs(80, 1, seed=11)
    gate = Gate.empty(DIM)
    order = np.argsort(x[:, 0])  # two halves of one blob, each made a class by itself
    for name, part in (("novel-1", order[:20]), ("novel-2", order[-20:])):
        gate.add_members(name, x[part], 0.75, discovered=True)
    out = discover(gate, buffer_of(x[order[20:-20]], np.arange(40)), RULES, 0.75)
    assert out.merged and set(out.merged[0]) == {"novel-1", "novel-2"}
    assert len(gate) == 1 and gate.names[0] == out.merged[0][1] and out.grown == gate.names


def test_a_class_split_over_two_groups_is_grown_by_one_only():
    # classes X and Y each hold members of two blobs A and B (X mostly B, Y mostly A); with `hold` below
    # one half both groups hold more than `hold` of both classes. Each class belongs to the group holding
    # most of its members: Y grows from A, X from B, nothing is merged (and nothing is touched twice).
    x, truth = blobs(60, 2, seed=5)
    a, b = x[truth == 0], x[truth == 1]
    gate = Gate.empty(DIM)
    for name, members in (("novel-1", np.vstack([a[:8], b[:12]])), ("novel-2", np.vstack([a[8:20], b[12:20]]))):
        # a radius too small to cover anything: the buffer's rows all reach the clustering
        gate.add(name, normalize(members.mean(axis=0, keepdims=True))[0], 1e-3, len(members), discovered=True)
        gate.members[-1] = members.astype(np.float32)
    rules = dataclasses.replace(RULES, hold=0.3)
    out = discover(gate, buffer_of(np.vstack([a[20:], b[20:]]), np.arange(80)), rules, 0.75)
    assert not out.merged and sorted(out.grown) == ["novel-1", "novel-2"] and len(set(out.grown)) == 2
    assert gate.names == ["novel-1", "novel-2"]
    index, _ = gate.classify(np.vstack([a[20:], b[20:]]))
    assert (index[:40] == 1).mean() > 0.6 and (index[40:] == 0).mean() > 0.6


def test_small_rounds_keep_small_classes_apart():
    # the open-world benchmark's round: a class made earlier (16 members) and six new kinds of 12 rows
    # each, 88 rows in all. With k 15 every row's neighbours spill over into other kinds and Leiden put
    # them into 2-3 groups, one of them grown into the old class; with k at most sqrt(rows) (10) each
    # kind is a class of its own and the old class takes none of them.
    assert graph_k(15, 88) == 10 and graph_k(15, 196) == 14 and graph_k(15, 197) == 15 and graph_k(15, 5) == 3
    for seed in (0, 1, 2):
        x, truth = blobs(16, 7, 0.5, seed=seed)
        gate = Gate.empty(DIM)
        gate.add_members("novel-1", x[truth == 0], 0.75, discovered=True)
        rows = np.concatenate([np.flatnonzero(truth == c)[:12] for c in range(1, 7)])
        out = discover(gate, buffer_of(x[rows]), RULES, 0.75)
        assert len(out.new) == 6 and not out.grown and not out.merged, seed
        for ids in out.assigned.values():
            assert len(np.unique(truth[rows][ids])) == 1, seed


def test_a_seen_class_never_grows_from_unseen_rows():
    x, _ = blobs(60, 1, seed=12)
    gate = Gate.empty(DIM)
    gate.add_members("coat", x[:30], 0.75)  # seen: from a labeled memory
    radius, size = float(gate.radii[0]), int(gate.sizes[0])
    out = discover(gate, buffer_of(x[30:], np.arange(30)), RULES, 0.75)
    assert not out and gate.names == ["coat"] and float(gate.radii[0]) == radius and int(gate.sizes[0]) == size


def test_buffer_keeps_the_newest_rows_and_diverse_views_per_track():
    buf = UnseenBuffer(capacity=5, per_track=0)
    for i in range(3):
        ids = buf.add(np.full((3, 2), i, np.float32), np.full(3, i, np.int64))
    assert len(buf) == 5 and buf.tracks.tolist() == [1, 1, 2, 2, 2] and ids.tolist() == [6, 7, 8]
    rng = np.random.default_rng(4)
    views = normalize(rng.normal(size=(3, DIM)))
    buf = UnseenBuffer(capacity=100, per_track=3)
    buf.add(views, np.full(3, 7, np.int64))
    buf.add(jitter(views[:1], 4, 5), np.full(4, 7, np.int64))  # more frames like the first view
    assert len(buf) == 3  # the track still has three distinct views:
    assert np.sort(buf.embeddings @ views.T, axis=0)[-1].min() > 0.99
    buf.add(views[:2], np.full(2, -1, np.int64))
    assert len(buf) == 5  # untracked rows are not capped


def test_rules_come_from_settings_of_the_same_names():
    from stages.config import ClusterSettings
    assert DiscoveryRules.from_settings(ClusterSettings(k=7, resolution=0.5)) == DiscoveryRules(k=7, resolution=0.5)


def test_a_lump_of_kinds_splits_into_one_class_per_kind():
    # the open-world benchmark's lump: three kinds close to each other (3 objects x 3 views each) and a
    # class made earlier far away, 87 rows in all. Leiden groups the three kinds into one community; each
    # object's nearest other object is of its kind, so each kind is a piece of its own and a class.
    for seed in range(3):
        rng = np.random.default_rng(seed)
        base = normalize(rng.normal(size=(1, DIM)))
        views, tracks, kind = [], [], []
        for k in range(3):
            centre = normalize(base + 0.5 * normalize(rng.normal(size=(1, DIM))))
            for o in range(3):
                thing = normalize(centre + 0.25 * rng.normal(size=(1, DIM)) / np.sqrt(DIM))
                views.append(normalize(thing + 0.02 * rng.normal(size=(3, DIM)) / np.sqrt(DIM)))
                tracks += [10 * k + o] * 3
                kind += [k] * 3
        gate = Gate.empty(DIM)
        gate.add_members("novel-1", normalize(-base + 0.5 * rng.normal(size=(60, DIM)) / np.sqrt(DIM)), 0.75,
                         discovered=True)
        buf = UnseenBuffer(1000)
        ids = buf.add(np.vstack(views).astype(np.float32), np.array(tracks))
        out = discover(gate, buf, RULES, 0.75)
        assert len(out.new) == 3 and not out.grown and not out.merged, seed
        for rows in out.assigned.values():
            assert len(np.unique(np.array(kind)[np.searchsorted(ids, rows)])) == 1, seed
