"""Label-free discovery of new classes in a stream (SKZC's KCH without labels): Leiden communities on a kNN graph."""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import igraph
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from models.knn import knn
from models.sddc import Gate
from models.unseen import UnseenBuffer


RESTART_ROWS = 20_000  # graphs larger than this get one Leiden run of two iterations, whatever `restarts` says


@dataclass(frozen=True)
class DiscoveryRules:
    """Every knob is a rank, a count, a share or a resolution — none is a distance or a similarity, so
    one default serves every embedder and domain."""
    k: int = 15                # neighbours per row in the kNN graph (at most sqrt(rows in it): `graph_k`)
    resolution: float = 0.4    # Leiden modularity resolution; at <= 0.5 one Gaussian blob is never split (1.0 shatters it)
    min_size: int = 6          # rows a new class needs
    min_tracks: int = 2        # ... from at least this many tracks (untracked rows count one each)
    min_objects: int = 2       # ... showing at least this many distinct objects (see `objects`)
    per_track: int = 3         # views kept per track in the buffer, and rows per object in the graph
    anchors: int = 32          # newest stored members per known class clustered with the buffer
    hold: float = 0.3          # the group holding most, and more than this share, of a class's anchors *is* that class
    max_members: int = 256     # member embeddings kept per class (centroid, radius, anchors)
    restarts: int = 3          # Leiden runs per round; the highest-modularity partition is kept
    seed: int = 0

    @classmethod
    def from_settings(cls, settings) -> "DiscoveryRules":
        """The rules from any object with attributes of the same names (the cluster stage's settings)."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls) if hasattr(settings, f.name)})


@dataclass
class Outcome:
    """What one discovery round changed."""
    new: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    merged: list[tuple[str, str]] = field(default_factory=list)      # (absorbed class, into class)
    assigned: dict[str, np.ndarray] = field(default_factory=dict)    # class -> buffer row ids that joined it
    thumbs: dict[str, list] = field(default_factory=dict)            # class -> thumbnails of those rows

    def __bool__(self) -> bool:
        return bool(self.new or self.grown or self.merged)


def communities(x: np.ndarray, k: int, resolution: float, seed: int = 0, restarts: int = 3) -> np.ndarray:
    """x: (N, D) normalized -> community id per row (N,) int64: Leiden (modularity with `resolution`) on
    the symmetrized graph of each row's k nearest neighbours. Ranks only, no similarity threshold."""
    if len(x) < 3:
        return np.zeros(len(x), np.int64)
    return partition(knn(x, min(k, len(x) - 1), seed)[0], resolution, seed, restarts)


def graph_k(k: int, n: int) -> int:
    """Neighbours per row in a graph of n rows: `k`, but never more than sqrt(n) (rounded up). A class
    of a few objects contributes a few rows; in a small graph k = 15 exceeds that, so every row of it
    links mostly to other things and Leiden lumps small classes together (the open-world benchmark: 9
    rows a class, 60-130 rows a round). From 197 rows up this is `k` itself (docs/open-world.md)."""
    return max(min(k, int(np.ceil(np.sqrt(n))), n - 1), 0)


def partition(nbrs: np.ndarray, resolution: float, seed: int = 0, restarts: int = 3) -> np.ndarray:
    """nbrs: (N, k) neighbour indices (-1 = none) -> community id per row (N,) int64: the best of
    `restarts` seeded Leiden runs (igraph's, modularity at `resolution`) on the symmetrized graph.
    Leiden is randomized and on a few thousand rows its runs differ; the partition with the highest
    modularity is kept. Above RESTART_ROWS rows runs agree closely and one run of two iterations is
    made (time)."""
    n = len(nbrs)
    if n < 3:
        return np.zeros(n, np.int64)
    graph = igraph.Graph(n=n)
    graph.add_edges(_edges(nbrs))
    best, best_q = None, -np.inf
    for r in range(max(restarts, 1) if n <= RESTART_ROWS else 1):
        igraph.set_random_number_generator(random.Random(seed + r))  # igraph's Leiden draws from it
        # to convergence on buffers of everyday size; above RESTART_ROWS two iterations (at 10^5 rows
        # modularity 0.9879 vs 0.9881, partitions at NMI 0.97, 1.2 s vs 5.2 s: docs/scale.md)
        part = graph.community_leiden(objective_function="modularity", resolution=resolution,
                                      n_iterations=-1 if n <= RESTART_ROWS else 2)
        q = graph.modularity(part.membership, resolution=resolution)  # the objective Leiden maximized
        if best is None or q > best_q:  # q is nan on a graph without edges
            best, best_q = part, q
    igraph.set_random_number_generator(random)
    return np.asarray(best.membership, np.int64)


def _edges(nbrs: np.ndarray) -> np.ndarray:
    """(N, k) neighbour indices (-1 = none) -> (E, 2) int64 undirected edges, each once as (low, high),
    sorted. Deduplicated by a sort: np.unique hashes, about 50x slower on 10^6 distinct keys."""
    n = len(nbrs)
    rows = np.repeat(np.arange(n), nbrs.shape[1])
    cols = nbrs.ravel()
    ok = (cols >= 0) & (cols != rows)
    key = np.sort(np.minimum(rows[ok], cols[ok]) * n + np.maximum(rows[ok], cols[ok]))
    key = key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key
    return np.stack([key // n, key % n], axis=1)


def objects(x: np.ndarray, tracks: np.ndarray, nbrs: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """Object id per row (N,): rows of one track are one object, and two tracks are one object when
    some of their views lie closer than either track's own views lie to each other (one thing that
    lingered in view and was re-tracked). The scale comes from the data: a track's spread is the
    largest distance between its own views, capped at the median track's (tracks with one view take
    the median). Untracked
    rows (-1) are objects of their own. nbrs/sims: (N, k) neighbours and cosines of x."""
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int64)
    _, t = np.unique(tracks, return_inverse=True)
    spread = np.full(t.max() + 1, np.nan)
    order = np.argsort(t, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(t[order]) != 0])
    for group in np.split(order, starts[1:]):
        if len(group) > 1 and tracks[group[0]] >= 0:
            views = x[group]
            spread[t[group[0]]] = float(np.sqrt(max(2 - 2 * float((views @ views.T).min()), 0.0)))
    # a track whose views disagree (the tracker swapped objects) must not join half the buffer: no
    # track's spread counts for more than the median track's
    typical = float(np.nanmedian(spread)) if np.isfinite(spread).any() else 0.0
    spread = np.minimum(np.where(np.isnan(spread), typical, spread), typical)
    rows = np.repeat(np.arange(n), nbrs.shape[1])
    cols, dist = nbrs.ravel(), np.sqrt(np.maximum(2 - 2 * sims.ravel(), 0))
    ok = (cols >= 0)
    rows, cols, dist = rows[ok], cols[ok], dist[ok]
    tracked = (tracks[rows] >= 0) & (tracks[cols] >= 0)
    same = tracked & ((tracks[rows] == tracks[cols]) | (dist <= np.minimum(spread[t[rows]], spread[t[cols]])))
    # rows of one track are linked through the track's first row, whether or not they are neighbours
    first = order[starts][np.searchsorted(t[order][starts], t)]   # (N,) first row of each row's group
    on_track = np.flatnonzero(tracks >= 0)
    chain = np.stack([first[on_track], on_track], axis=1)
    a = np.concatenate([rows[same], chain[:, 0]])
    b = np.concatenate([cols[same], chain[:, 1]])
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def discover(gate: Gate, buffer: UnseenBuffer, rules: DiscoveryRules, alpha: float) -> Outcome:
    """One discovery round. The buffer is clustered together with stored members of the known classes
    near it (every stored member of a discovered class, the newest `anchors` of a seen one; Leiden on a
    kNN graph, see `communities`), and each community is judged by the classes whose members it holds:

    - mostly seen-class members: left alone — a seen class never grows from unseen rows, and those
      rows stay in the buffer;
    - holds discovered classes (of each, the most members of any community and more than `hold` of
      them, see `_homes`): it *is* that class, which grows by the community's rows; two or more such
      classes merge into the largest. So a class found in one round is grown, not duplicated, in the
      next, fragments of one class merge, and a class Leiden splits over two communities grows in one;
    - holds no class and is mostly buffer rows: a new class when its rows number `min_size`, come from
      `min_tracks` tracks and show `min_objects` distinct objects (see `objects`), so one object
      lingering in view, or near-duplicate frames, never make a class by themselves.
    In a small round (fewer than k * k rows in the graph, `graph_k`: the open-world benchmark's 9 rows a
    kind) Leiden lumps kinds, so a community is split further by its objects' nearest others (`_pieces`):
    a class grows only by the objects that lead to it, and a kind of its own is a class by itself.
    Rows that join a class, and rows a class now covers, leave the buffer."""
    out = Outcome()
    if len(buffer) == 0:
        return out
    buffer.remove(buffer.ids[gate.classify(buffer.embeddings)[0] >= 0])  # covered since they came
    x, tracks, ids = buffer.embeddings, buffer.tracks, buffer.ids
    if len(x) < rules.min_size:
        return out
    # one kNN search serves both steps: the buffer rows and the known classes' members together
    anchors, owners = class_anchors(gate, rules.anchors, x)
    nodes = np.vstack([x, anchors])
    nbrs, sims = knn(nodes, min(rules.k, len(nodes) - 1), rules.seed)
    own = nbrs[:len(x)] < len(x)  # among buffer rows only
    obj = objects(x, tracks, np.where(own, nbrs[:len(x)], -1), np.where(own, sims[:len(x)], -np.inf))
    reps = _representatives(obj, rules.per_track)
    kept = np.concatenate([reps, len(x) + np.arange(len(anchors))])
    index = np.full(len(nodes) + 1, -1, np.int64)  # node -> its place among the kept nodes; -1 maps to -1
    index[kept] = np.arange(len(kept))
    # the graph links each row to its graph_k nearest (most similar first); `objects` above used all k
    k_graph = graph_k(rules.k, len(kept))
    comm_nodes = partition(index[nbrs[kept, :k_graph]], rules.resolution, rules.seed, rules.restarts)
    comm = _majority(obj, obj[reps], comm_nodes[:len(reps)])
    anchor_comm = comm_nodes[len(reps):]
    names, discovered = list(gate.names), np.array(gate.discovered, bool)
    home = _homes(owners, anchor_comm, discovered, rules.hold)
    groups = np.concatenate([obj, obj.max() + 1 + owners])   # a node's object, or its class (n_obj + j)
    small = k_graph < rules.k
    ranked = nearest_others(groups, nbrs, sims) if small else []
    actions = []  # decided on this round's class indices, applied by name afterwards
    for c in np.unique(comm):
        rows = np.flatnonzero(comm == c)
        mine = owners[anchor_comm == c]
        if np.count_nonzero(~discovered[mine]) > len(rows) + np.count_nonzero(discovered[mine]):
            continue  # mostly a seen class's members: its unseen rows grow nothing
        held = [int(j) for j in np.unique(mine) if home.get(int(j)) == c]
        if not held and not len(mine) < len(rows):
            continue  # mostly a known class's members
        # in a small round (fewer than k * k rows, where the graph's k is cut: `graph_k`) a few rows per
        # kind are too few for Leiden to part kinds, and the objects' own nearest links split the community
        pieces = _pieces(obj, ranked, rows, held, obj.max() + 1, lambda part: _enough(part, tracks, obj, rules)) \
            if small else [(rows, held)]
        for part, classes in pieces:
            if classes and (len(part) or len(classes) > 1):
                actions.append(([names[j] for j in classes], part))
            elif _enough(part, tracks, obj, rules):
                actions.append(([], part))
    for held, rows in actions:
        if held:
            name = _grow(gate, held, x[rows], alpha, rules, out)
            if not len(rows):
                continue  # classes merged, no rows
        else:
            name = _next_name(gate)
            gate.add_members(name, x[rows][-rules.max_members:], alpha, discovered=True)
            out.new.append(name)
        out.assigned[name] = ids[rows]
        out.thumbs[name] = buffer.thumbs(ids[rows])
    if out:
        buffer.remove(np.concatenate(list(out.assigned.values()) or [np.zeros(0, np.int64)]))
        buffer.remove(buffer.ids[gate.classify(buffer.embeddings)[0] >= 0])
    return out


def nearest_others(groups: np.ndarray, nbrs: np.ndarray, sims: np.ndarray) -> list[np.ndarray]:
    """Per group (an object, or a class's anchors) the other groups its nodes' neighbours belong to,
    nearest first (by the most similar node). groups: (N,) group id per node; nbrs/sims: (N, k) each
    node's neighbours (-1 = none)."""
    size = int(groups.max()) + 1 if len(groups) else 0
    target = np.concatenate([groups, [-1]])[nbrs]
    other = (nbrs >= 0) & (target != groups[:, None])
    src, dst, sim = np.broadcast_to(groups[:, None], nbrs.shape)[other], target[other], sims[other]
    order = np.lexsort((-sim, dst, src))               # per (group, other group): most similar first
    src, dst, sim = src[order], dst[order], sim[order]
    first = np.ones(len(src), bool)
    first[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    src, dst, sim = src[first], dst[first], sim[first]
    order = np.lexsort((-sim, src))                    # per group: nearest other group first
    src, dst = src[order], dst[order]
    cuts = np.searchsorted(src, np.arange(size + 1))
    return [dst[cuts[g]:cuts[g + 1]] for g in range(size)]


def _pieces(obj: np.ndarray, ranked: list[np.ndarray], rows: np.ndarray, held: list[int], first_class: int, enough):
    """A community split by resemblance. Each object (of `rows`) is linked to the group it lies nearest
    to (`nearest_others`); objects linked to each other form a piece, which ends either in a loop or in
    the one object whose nearest lies elsewhere: in a `held` class (group first_class + j), which the
    piece then joins, or outside the community. A piece ending in no class stands alone when it is a
    kind of its own (`_closed`) and `enough(its rows)`; the other such pieces stay with the community's
    class, or together as the rest when it holds none. Two held classes each nearest the other are one.
    Yields (row indices, class indices) per class or piece; rows may be empty (classes merging)."""
    objs = np.unique(obj[rows])
    near = {int(g): (int(ranked[g][0]) if len(ranked[g]) else -1) for g in objs}
    place = {int(o): i for i, o in enumerate(objs)}
    links = [(place[int(o)], place[near[int(o)]]) for o in objs if near[int(o)] in place]
    a, b = (np.array(v, np.int64) for v in zip(*links)) if links else (np.zeros(0, np.int64),) * 2
    label = connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(len(objs),) * 2),
                                 directed=False)[1]
    root = {j: j for j in held}

    def top(j):
        while root[j] != j:
            j = root[j]
        return j
    for j in held:  # two held classes each nearest the other are one
        k = int(ranked[first_class + j][0]) - first_class if len(ranked[first_class + j]) else -1
        if k in root and len(ranked[first_class + k]) and int(ranked[first_class + k][0]) - first_class == j:
            root[top(j)] = top(k)
    joined, alone, rest = {}, [], []   # class root -> objects; pieces of their own; the rest
    community = np.r_[objs, first_class + np.asarray(held, np.int64)]
    for g in np.unique(label):
        members = objs[label == g]
        ends = [near[int(o)] - first_class for o in members if near[int(o)] not in place]
        j = next((e for e in ends if e in root), None)
        if j is not None:
            joined.setdefault(top(j), []).append(members)
        elif _closed(members, ranked, community) and enough(rows[np.isin(obj[rows], members)]):
            alone.append(members)
        else:
            rest.append(members)
    tops = sorted({top(j) for j in held})
    if tops:  # what is not a kind of its own stays with the community's class (the lowest-indexed)
        joined.setdefault(tops[0], []).extend(rest)
        rest = []
    for r in tops:
        members = np.concatenate(joined.get(r) or [np.zeros(0, np.int64)])
        yield rows[np.isin(obj[rows], members)], [j for j in held if top(j) == r]
    for members in alone + ([np.concatenate(rest)] if rest else []):
        yield rows[np.isin(obj[rows], members)], []


def _closed(members: np.ndarray, ranked: list[np.ndarray], community: np.ndarray) -> bool:
    """The objects resemble each other more than anything else in their community: each one's
    len(members) - 1 nearest groups among `community` (its objects and classes) are the others."""
    if len(members) < 2:
        return False
    for o in members:
        mine = ranked[o][np.isin(ranked[o], community)][:len(members) - 1]
        if not np.isin(mine, members).all():
            return False
    return True


def _grow(gate: Gate, held: list[str], members: np.ndarray, alpha: float, rules: DiscoveryRules, out: Outcome) -> str:
    """The largest held class grows by `members`; the other held classes merge into it. Returns its name."""
    target = max(held, key=lambda n: int(gate.sizes[gate.names.index(n)]))
    for other in held:
        if other != target:
            gate.merge(other, target, alpha, rules.max_members)
            out.merged.append((other, target))
    if len(members):
        gate.grow(gate.names.index(target), members, alpha, rules.max_members)
        out.grown.append(target)
    return target


def _homes(owners: np.ndarray, anchor_comm: np.ndarray, discovered: np.ndarray, hold: float) -> dict[int, int]:
    """Discovered class index -> the community that *is* it: the one holding most of its anchors (the
    lowest community on ties), when that is more than `hold` of them. One community per class, so with
    `hold` below 0.5 a class is never grown (or merged away) twice in one round."""
    out = {}
    for j in np.unique(owners):
        if discovered[j]:
            comms, counts = np.unique(anchor_comm[owners == j], return_counts=True)
            if counts.max() > hold * counts.sum():
                out[int(j)] = int(comms[counts.argmax()])
    return out


def _majority(groups: np.ndarray, voter_groups: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Per row of `groups`, the most common vote among the voters of its group (ties: the lowest vote)."""
    pairs, counts = np.unique(np.stack([voter_groups, votes], axis=1), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))     # per group: most votes first
    pairs = pairs[order]
    best = pairs[np.r_[True, np.diff(pairs[:, 0]) != 0]]        # (G, 2): group, winning vote
    return best[np.searchsorted(best[:, 0], groups), 1]


def _enough(rows: np.ndarray, tracks: np.ndarray, obj: np.ndarray, rules: DiscoveryRules) -> bool:
    t = tracks[rows]
    n_tracks = len(np.unique(t[t >= 0])) + int((t < 0).sum())
    return len(rows) >= rules.min_size and n_tracks >= rules.min_tracks and \
        len(np.unique(obj[rows])) >= rules.min_objects


def _representatives(obj: np.ndarray, per_object: int) -> np.ndarray:
    """Row indices entering the graph: the newest `per_object` rows of each object (all when 0)."""
    if not per_object or len(obj) == 0:
        return np.arange(len(obj))
    order = np.lexsort((-np.arange(len(obj)), obj))          # by object, newest first
    starts = np.r_[0, np.flatnonzero(np.diff(obj[order]) != 0) + 1]
    rank = np.arange(len(obj)) - np.repeat(starts, np.diff(np.r_[starts, len(obj)]))
    return np.sort(order[rank < per_object])


def class_anchors(gate: Gate, per_class: int, near: np.ndarray, top: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The known classes' nodes in the graph: every stored member of a discovered class, the newest
    `per_class` members of a seen class (its centroid when members are unknown), for the classes near
    the rows `near` (among the `top` nearest centroids of some row; all classes when there are few).
    Returns embeddings (A, D) and the owning class index of each (A,)."""
    dim = gate.centroids.shape[1] if len(gate) else near.shape[1]
    if len(gate) == 0:
        return np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    if len(gate) <= 4 * top:
        chosen = range(len(gate))
    else:
        d = gate.space(near) @ gate.centroids.T - 0.5 * (gate.centroids ** 2).sum(axis=1)  # larger = nearer
        chosen = np.unique(np.argpartition(-d, top - 1, axis=1)[:, :top])
    parts, owners = [], []
    for i in chosen:
        m = gate.members[i] if len(gate.members[i]) else gate.centroids[i:i + 1]
        first = 0 if gate.discovered[i] and len(gate.members[i]) else max(len(m) - per_class, 0)
        if first >= len(m):
            continue
        parts.append(m[first:])
        owners.append(np.full(len(m) - first, i, np.int64))
    if not parts:
        return np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    return np.vstack(parts).astype(np.float32), np.concatenate(owners)


def _next_name(gate: Gate) -> str:
    numbers = [int(n.split("-")[1]) for n in gate.names if n.startswith("novel-") and n.split("-")[1].isdigit()]
    return f"novel-{max(numbers, default=0) + 1}"
