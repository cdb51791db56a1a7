"""SKZC's SDDC gate: per-class centroid and radius (an alpha-quantile of member distances), seen/unseen by distance."""
from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from owd.errors import OwdError

UNSEEN = "unseen"
MEMORY_FORMAT = 1
RADIUS_POOL = 0.0  # default of gate.radius_pool: the paper's per-class radii (docs/evaluation.md, "Gate calibration")
# Class names become folder names and travel in events and commands: ASCII letters, digits, '-', '_'.
CLASS_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_name(name: str) -> str:
    """name, if it may name a class; ValueError saying what a name may be otherwise."""
    if not isinstance(name, str) or not CLASS_NAME.fullmatch(name) or name == UNSEEN:
        raise ValueError(f"class name {name!r} is not allowed: use 1 to 64 ASCII letters, digits, '-' or '_' "
                         f"(and not {UNSEEN!r})")
    return name


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, so distances compare directions as DINO's cosine features intend."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def centroid_and_radius(members: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """members: (M, D) normalized embeddings -> centroid (D,), radius = alpha-quantile of member distances."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    centroid = members.mean(axis=0)
    distances = np.linalg.norm(members - centroid, axis=1)
    return centroid.astype(np.float32), float(np.quantile(distances, alpha))


@dataclass
class Gate:
    """Each embedding set holds at most set_size classes, as in the paper; a new class joins the
    last set until it is full, then opens a new one. Within each set the nearest centroid is the
    candidate; an embedding is seen when a candidate lies within its class radius (the nearest
    such candidate wins) and unseen otherwise. With one set this is "nearest centroid, within its radius"."""
    names: list[str]
    centroids: np.ndarray  # (K, D) float32
    radii: np.ndarray      # (K,) float32
    sizes: np.ndarray      # (K,) int64, members each class was built from
    set_ids: np.ndarray    # (K,) int64
    set_size: int = 7
    # Per class, a bounded sample of member embeddings (M_i, D) so a class can grow; empty when unknown.
    members: list[np.ndarray] = field(default_factory=list)
    # Per class: True when discovery made it (it may grow and merge), False for seen classes given by a
    # person or a labeled memory (discovery never grows them from unseen rows).
    discovered: list[bool] = field(default_factory=list)
    # Each class's radius is an alpha-quantile of a few hundred member distances, a noisy estimate; the
    # gate uses it shrunk towards the median radius of all classes: (1 - pool) R_i + pool median(R).
    # 0 (the default) is the paper's per-class radius.
    # A setting, not memory: not saved with the classes.
    pool: float = 0.0
    # The gate measures distances between embeddings centred on this point and normalized again
    # (SimpleShot's CL2N): the mean of the seen classes' member means, set by centre_on_seen(); None = not
    # centred (the paper's gate, and any memory with fewer than two seen classes). Post-ReLU features share
    # one large mean direction that says nothing about the class; removing it spreads the classes apart.
    # Centroids and radii live in the centred space; members are kept as given (discovery's space).
    center: np.ndarray | None = None
    # (centroids, a copy of set_ids, squared centroid norms, slot grid) while the classes are unchanged; see _layout
    _cache: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.discovered) < len(self.names):  # classes of an older memory file: novel-N were discovered
            self.discovered = self.discovered + [n.startswith("novel-") for n in self.names[len(self.discovered):]]

    @classmethod
    def empty(cls, dim: int = 0, set_size: int = 7) -> "Gate":
        return cls([], np.zeros((0, dim), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                    np.zeros(0, np.int64), set_size)

    def __len__(self) -> int:
        return len(self.names)

    def effective_radii(self) -> np.ndarray:
        """(K,) float32: the radii classify uses, each class's own shrunk towards the classes' median."""
        if not 0.0 <= self.pool <= 1.0:
            raise ValueError(f"radius pool must lie in [0, 1], got {self.pool}")
        if len(self) == 0 or self.pool == 0.0:
            return self.radii.astype(np.float32, copy=False)  # per frame: no copy for the paper's gate
        return ((1.0 - self.pool) * self.radii + self.pool * np.median(self.radii)).astype(np.float32)

    def next_set_id(self) -> int:
        if len(self) == 0:
            return 0
        last = int(self.set_ids.max())
        return last if np.count_nonzero(self.set_ids == last) < self.set_size else last + 1

    def space(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) normalized embeddings as the gate measures them: centred on `center` and normalized again."""
        if self.center is None:
            return embeddings
        return normalize(np.asarray(embeddings, np.float32) - self.center)

    def centre_on_seen(self, alpha: float) -> bool:
        """Centres the gate on the mean of the seen classes' member means (each seen class counts once) and
        refits every class from its members. Not centred with fewer than two seen classes (one class's own
        mean would be its centroid). False, and nothing changes, when a class has no members to refit from."""
        if any(len(m) == 0 for m in self.members):
            return False
        seen = [m for m, d in zip(self.members, self.discovered) if not d]
        self.center = np.mean([m.mean(axis=0) for m in seen], axis=0).astype(np.float32) if len(seen) >= 2 else None
        if len(self):
            self._edit()
            for i, m in enumerate(self.members):
                self.centroids[i], self.radii[i] = centroid_and_radius(self.space(m), alpha)
        return True

    def add_members(self, name: str, members: np.ndarray, alpha: float, discovered: bool = False) -> None:
        """A new class from its member embeddings (M, D), normalized."""
        centroid, radius = centroid_and_radius(self.space(members), alpha)
        self.add(name, centroid, radius, len(members), discovered)
        self.members[-1] = members.astype(np.float32)

    def grow(self, i: int, members: np.ndarray, alpha: float, keep: int) -> None:
        """Class i absorbs more members; centroid and radius are recomputed from the newest `keep`."""
        pool = np.vstack([self.members[i], members])[-keep:] if len(self.members[i]) else members[-keep:]
        centroid, radius = centroid_and_radius(self.space(pool), alpha)
        self._edit()
        self.centroids[i], self.radii[i] = centroid, radius
        self.sizes[i] += len(members)
        self.members[i] = pool.astype(np.float32)

    def add(self, name: str, centroid: np.ndarray, radius: float, size: int, discovered: bool = False) -> None:
        check_name(name)
        if name in self.names:
            raise ValueError(f"class {name!r} exists already")
        if len(self) and centroid.shape != self.centroids.shape[1:]:
            raise ValueError(f"centroid has dim {centroid.shape}, classes have {self.centroids.shape[1:]}")
        set_id = self.next_set_id()
        self.names.append(name)
        self.centroids = np.vstack([self.centroids.reshape(-1, centroid.shape[0]), centroid[None]]).astype(np.float32)
        self.radii = np.append(self.radii, np.float32(radius)).astype(np.float32)
        self.sizes = np.append(self.sizes, size).astype(np.int64)
        self.set_ids = np.append(self.set_ids, set_id).astype(np.int64)
        self.members.append(np.zeros((0, centroid.shape[0]), np.float32))
        self.discovered.append(bool(discovered))

    def rename(self, old: str, new: str) -> None:
        check_name(new)
        if new in self.names:
            raise ValueError(f"class {new!r} exists already")
        self.names[self._index(old)] = new

    def remove(self, name: str) -> None:
        i = self._index(name)
        keep = np.arange(len(self)) != i
        del self.names[i], self.members[i], self.discovered[i]
        self.centroids, self.radii = self.centroids[keep], self.radii[keep]
        self.sizes, self.set_ids = self.sizes[keep], self.set_ids[keep]

    def merge(self, source: str, target: str, alpha: float, keep: int) -> None:
        """target absorbs source. With member samples on both sides centroid and radius are recomputed
        from them; otherwise the centroid is the size-weighted mean and the radius the larger one."""
        i, j = self._index(source), self._index(target)
        if i == j:
            raise ValueError("cannot merge a class into itself")
        if len(self.members[i]) and len(self.members[j]):
            self.grow(j, self.members[i], alpha, keep)
            self.sizes[j] += self.sizes[i] - len(self.members[i])
        else:
            w = self.sizes[[i, j]].astype(np.float32)
            self._edit()
            self.centroids[j] = (w[0] * self.centroids[i] + w[1] * self.centroids[j]) / max(w.sum(), 1.0)
            self.radii[j] = max(self.radii[i], self.radii[j])
            self.sizes[j] += self.sizes[i]
        self.remove(source)

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"no class {name!r}; classes: {', '.join(self.names) or 'none'}")
        return self.names.index(name)

    def classify(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """embeddings: (N, D) normalized -> (class index (N,) int64, -1 = unseen; distance (N,) float32
        to the winning centroid, or to the nearest centroid overall when unseen; inf with no classes).
        Distances are measured in the gate's space (see `center`).

        Distances are float32. One matrix product gives them all up to a rounding bound; those that can
        decide a label (near their set's minimum and their radius, or near the overall minimum) are
        recomputed as ||e - c||, so the result is exactly that of computing every ||e - c||."""
        n, k = len(embeddings), len(self)
        if k == 0 or n == 0:
            return np.full(n, -1, np.int64), np.full(n, np.inf, np.float32)
        e = np.ascontiguousarray(self.space(embeddings), np.float32)
        norms, slots = self._layout()  # (K,) squared centroid norms; (W, S) class per slot and set, K pads
        radii = self.effective_radii()  # (K,) the classes' own radii unless pooled
        radii2 = np.append(radii ** 2, np.float32(-1))[slots]  # (W, S)
        sq, tol = _squared_distances(e, self.centroids, norms)  # (K + 1, N) last row inf, (N,)
        a = sq[slots]  # (W, S, N) every class once, pads inf
        amin = a.min(axis=0)  # (S, N) each set's least
        lowest = amin.min(axis=0)  # (N,) the least overall
        # only sets whose nearest may lie inside its radius, or that may hold the nearest overall, matter
        s_i, n_i = np.nonzero((amin <= radii2.max(axis=0)[:, None] + tol) | (amin <= lowest + 2 * tol))  # (P,) each
        sub, t = a[:, s_i, n_i], tol[n_i]  # (W, P), (P,)
        near = sub <= amin[s_i, n_i] + 2 * t  # may be its set's nearest
        relevant = (near & (sub <= radii2[:, s_i] + t)).any(axis=0)  # (P,) the set's nearest may be inside
        candidate = near & relevant
        w_i, p_i = np.nonzero(candidate | (sub <= lowest[n_i] + 2 * t))  # ... or may be nearest overall
        cls, rows = slots[w_i, s_i[p_i]], n_i[p_i]
        dist = np.linalg.norm(e[rows] - self.centroids[cls], axis=1)  # exact, as ||e - c|| everywhere
        overall = np.full(n, np.inf, np.float32)
        np.minimum.at(overall, rows, dist)
        # per (set, row) pair: the set's nearest class (the lowest index on ties); does it hold the row?
        pick = candidate[w_i, p_i]
        cls, dist, p_i, w_i = cls[pick], dist[pick], p_i[pick], w_i[pick]
        first = _least_per_group(p_i, dist, w_i)
        cls, dist, p_i = cls[first], dist[first], p_i[first]
        holds = dist <= radii[cls]
        cls, dist, p_i = cls[holds], dist[holds], p_i[holds]
        # per row: the nearest class that holds it (the first set on ties)
        first = _least_per_group(n_i[p_i], dist, s_i[p_i])
        best = np.full(n, -1, np.int64)
        best[n_i[p_i[first]]] = cls[first]
        overall[n_i[p_i[first]]] = dist[first]
        return best, overall

    def _layout(self) -> tuple[np.ndarray, np.ndarray]:
        """Squared centroid norms (K,) and the slot grid (W, S) of `_set_grid`, kept while the classes
        are unchanged. Reading the centroids again costs as much as the product, so while the norms are
        kept the centroids are read-only: an edit from outside the class methods fails loudly instead of
        leaving them stale. set_ids are cheap to compare and stay writeable."""
        cache = self._cache
        if cache is None or cache[0] is not self.centroids or not np.array_equal(cache[1], self.set_ids):
            c = self.centroids
            cache = self._cache = (c, self.set_ids.copy(), np.einsum("ij,ij->i", c, c), _set_grid(self.set_ids).T.copy())
            c.flags.writeable = False
        return cache[2], cache[3]

    def _edit(self) -> None:
        """Before an in-place change of the centroids: drops the kept norms and makes them writeable."""
        self._cache = None
        if not self.centroids.flags.writeable:
            try:
                self.centroids.flags.writeable = True
            except ValueError:  # a view of read-only memory we do not own
                self.centroids = self.centroids.copy()

    def labels(self, index: np.ndarray) -> list[str]:
        return [self.names[i] if i >= 0 else UNSEEN for i in index]


def gate_of_snapshot(snapshot, set_size: int, pool: float = RADIUS_POOL) -> Gate:
    """A gate holding exactly a class snapshot's classes (anything with the columns of stream.messages.ClassUpdate:
    names, centroids, radii, sizes, set_ids, center — a (0,) center means not centred); no members."""
    center = np.asarray(snapshot.center, np.float32)
    return Gate(list(snapshot.names), snapshot.centroids.astype(np.float32), snapshot.radii.astype(np.float32),
                snapshot.sizes.astype(np.int64), snapshot.set_ids.astype(np.int64), set_size, pool=pool,
                center=center if len(center) else None)


def _squared_distances(e: np.ndarray, c: np.ndarray, cc: np.ndarray, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """e (N, D), c (K, D) float32, cc (K,) their squared norms -> ||e - c||^2 (K + 1, N) from a matrix
    product, the last row inf (padding), and (N,) a bound on its float32 rounding error with a wide
    margin (about 5x). The product runs block by block (measured ~15 % faster than one call at
    10^4 x 1280) and each block is completed while it is in cache."""
    k, eps = len(c), np.finfo(np.float32).eps
    out = np.empty((k + 1, len(e)), np.float32)
    out[k] = np.inf
    m = -2 * e.T  # (D, N); scaling by -2 is exact
    ee = np.einsum("ij,ij->i", e, e)
    for s in range(0, k, block):
        part = out[s:min(s + block, k)]
        np.matmul(c[s:s + block], m, out=part)
        part += cc[s:s + block, None]
        part += ee
    return out, 16 * e.shape[1] * eps * (ee + cc.max())


def _least_per_group(group: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Index of each group's least element, comparing `keys` in turn (groups in increasing order)."""
    if len(group) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort(keys[::-1] + (group,))
    g = group[order]
    return order[np.r_[True, g[1:] != g[:-1]]]


def _set_grid(set_ids: np.ndarray) -> np.ndarray:
    """set_ids (K,) -> class indices (S, W) per embedding set (ascending sets, ascending indices
    within a set), padded with K; W is the largest set."""
    order = np.argsort(set_ids, kind="stable")
    _, seg, counts = np.unique(set_ids[order], return_inverse=True, return_counts=True)
    grid = np.full((len(counts), counts.max()), len(set_ids), np.int64)
    grid[seg, np.arange(len(order)) - (np.cumsum(counts) - counts)[seg]] = order
    return grid


def save_gate(gate: Gate, path: str | Path) -> None:
    """Writes the class memory as .npz (no pickle) via a temp file and rename, so a crash never
    leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # Owner-only from the first byte (the classes describe what the camera saw); no following a planted link.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # a leftover temp file keeps its old mode through O_TRUNC
    with os.fdopen(fd, "wb") as f:
        members = {f"members_{i}": m.astype(np.float16) for i, m in enumerate(gate.members)}
        np.savez(f, format=np.int64(MEMORY_FORMAT), names=np.array(gate.names, dtype=np.str_),
                 centroids=gate.centroids, radii=gate.radii, sizes=gate.sizes, set_ids=gate.set_ids,
                 set_size=np.int64(gate.set_size), discovered=np.array(gate.discovered, bool), **members,
                 **({} if gate.center is None else {"center": gate.center.astype(np.float32)}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_gate(path: str | Path) -> Gate:
    """Reads a file written by save_gate; raises ValueError saying what is wrong with it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != MEMORY_FORMAT:
                raise ValueError(f"class memory {path} has format {int(z['format'])}, expected {MEMORY_FORMAT}")
            gate = Gate([str(n) for n in z["names"]], z["centroids"].astype(np.float32),
                        z["radii"].astype(np.float32), z["sizes"].astype(np.int64),
                        z["set_ids"].astype(np.int64), int(z["set_size"]))
            if "discovered" in z.files:
                gate.discovered = [bool(v) for v in z["discovered"]]
            if "center" in z.files:  # written since the gate centres on its seen classes; older files are not centred
                gate.center = z["center"].astype(np.float32)
            gate.members = [z[f"members_{i}"].astype(np.float32) if f"members_{i}" in z.files
                            else np.zeros((0, gate.centroids.shape[1]), np.float32) for i in range(len(gate.names))]
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"class memory {path} is not readable: {exc}") from None
    for name in gate.names:
        try:
            check_name(name)
        except ValueError as exc:
            raise ValueError(f"class memory {path}: {exc}") from None
    if len(set(gate.names)) != len(gate.names):
        raise ValueError(f"class memory {path} names a class twice")
    k = len(gate.names)
    if gate.centroids.shape[0] != k or any(len(a) != k for a in (gate.radii, gate.sizes, gate.set_ids, gate.discovered)):
        raise ValueError(f"class memory {path} is inconsistent: {k} names but other columns disagree")
    if gate.center is not None and (gate.center.shape != gate.centroids.shape[1:] or not np.isfinite(gate.center).all()):
        raise ValueError(f"class memory {path} has a centre of shape {gate.center.shape} for classes of dim "
                         f"{gate.centroids.shape[1]}, or one that is not finite")
    return gate


class MemoryFileError(OwdError, ValueError):
    """A class memory file that cannot be used; the message says what is wrong with it."""


def load_memory(path: str | Path | None, set_size: int, pool: float = RADIUS_POOL) -> Gate:
    """The class memory file if it exists (a path that does not exist yet starts empty), radii pooled by `pool`."""
    gate = Gate.empty(set_size=set_size)
    if path and Path(path).exists():
        try:
            gate = load_gate(path)
        except ValueError as exc:
            raise MemoryFileError(f"gate.memory: {exc}") from None
    gate.pool = pool
    return gate
