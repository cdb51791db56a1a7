"""Embed stage: crops every detected box and embeds the crops of several frames in one batch; with
embed.search, adds the windows of each frame that look like a discovered class (models/search.py)."""
from __future__ import annotations

import numpy as np

from models.boxes import crop
from models.compiled import build_embedder
from models.detections import Embedder
from models.proposals import PROPOSAL, agnostic_nms, box_iou
from models.sddc import Gate, gate_of_snapshot, load_memory, normalize
from models.reference import Reference, hard_negatives
from models.search import VOUCHED, ClassSearch, dense_map, refine
from models.snap import snap
from stages.config import ConfigError
from stages.process import StageProcess, limit_threads
from stream.messages import ClassUpdate, EndOfStream, FrameDetections, FrameEmbeddings
from stream.sockets import Inbox

SEARCH_LABEL = "search"  # det_label of a searched window (its origin is "proposal": kept only when seen);
#                          VOUCHED + class when the map vouches for it (models/search.py: the gate's `vouch`)
SNAP_NMS = 0.7  # snapped windows overlapping this much hold one object (the search's own NMS over classes)
SEARCH_SCORE = 0.0       # below every tracker threshold: a window starts no track (ByteTrack may match it to a
#                          live one, hence no window over a detector or motion box: Search.windows)


class Search:
    """The class search of one embed worker: the classes (the memory file's, then each ClassUpdate's), what
    their boxes look like in the dense map, and the windows it adds to each frame."""

    def __init__(self, network, gate: Gate, finder: ClassSearch, scale: float = 1.0, refine: int = 0,
                 snap: bool = False, reference: Reference | None = None, negatives: int = 4,
                 member_origins: tuple[str, ...] | None = None, learn_proposed: bool = False):
        if not hasattr(network, "feature_map"):
            raise ConfigError(f"embed.search needs an embedder with a dense feature map (efficientnet_lite0), "
                              f"not {type(network).__name__}")
        self.network, self.gate, self.finder, self.scale, self.refine = network, gate, finder, scale, refine
        self.snap = snap
        # with a reference, a window's crop is vouched for by kNN (models/reference.py), not by the map
        self.reference, self.negatives, self.member_origins = reference, negatives, member_origins
        # learn_proposed: background may be learnt on the frame's proposed windows too, unless vouched for
        # (judged first); otherwise never on them (a window is never judged and learnt on the same frame)
        self.learn_proposed = learn_proposed
        self.learnt = np.zeros((0, 4), np.float32)  # the background windows the last frame added (benchmarks)
        self.members = np.zeros(0, np.int64)  # the last frame's boxes the reference learnt as members (benchmarks)

    def update(self, update: ClassUpdate, dim: int) -> str | None:
        """Applies a class snapshot; returns why it cannot be used, or None."""
        if len(update) and update.centroids.shape[1] != dim:
            return f"class update of dim {update.centroids.shape[1]}, this embedder's is {dim}"
        self.gate = gate_of_snapshot(update, self.gate.set_size, self.gate.pool)  # as the gate stage's, centre included
        self.finder.forget_except(set(self.gate.names))
        if self.reference is not None:
            self.reference.forget_except(set(self.gate.names))
        return None

    def windows(self, msg: FrameDetections | FrameEmbeddings,
                x: np.ndarray) -> tuple[np.ndarray, tuple[str, ...], list[str], np.ndarray]:
        """msg's boxes with their embeddings (N, D) -> (M, 4) windows to embed, their det_labels and the class
        each was found for, and (≤ negatives, 4) background windows to embed for the reference (none without
        one): the map learns the boxes the classes hold, then proposes; a window over a box of the frame
        already taken (below) goes. A window the map vouches for as class c (ClassSearch.candidates) is
        VOUCHED + c."""
        none = np.zeros((0, 4), np.float32)
        if len(self.gate) == 0:
            return none, (), [], none
        dense = dense_map(self.network, msg.image, self.scale)
        index, _ = self.gate.classify(normalize(x)) if len(x) else (np.zeros(0, np.int64), None)
        names = [self.gate.names[i] if i >= 0 else None for i in index]
        self.finder.learn(dense, msg.xyxy, names)
        found, classes, vouched = self.finder.candidates(dense)
        if self.snap and len(found):  # to the object each holds; two windows on one object become one (best first)
            found = snap(msg.image, found)
            keep = np.sort(agnostic_nms(found, -np.arange(len(found)), SNAP_NMS))
            found, classes, vouched = found[keep], [classes[i] for i in keep], vouched[keep]
        negatives = none
        if self.reference is not None:
            # members: boxes seen as a class, of the origins the reference learns from (None: every origin)
            members = [n if self.member_origins is None or o in self.member_origins else None
                       for n, o in zip(names, msg.origins)]
            self.reference.learn(normalize(x), members)
            self.members = np.array([i for i, n in enumerate(members) if n is not None], np.int64)
            learnt = list(dict.fromkeys(n for n in names if n is not None))
            avoid = none if self.learn_proposed else found
            negatives = hard_negatives(self.finder, dense, msg.xyxy, learnt, avoid, self.negatives) if learnt else none
        labels = np.array([VOUCHED + n if v else SEARCH_LABEL for n, v in zip(classes, vouched)], object)
        # A box of the frame that is seen as a class, or a detector or motion box (a tracked object: ByteTrack
        # would give a window over it that track, and the gate keeps a settled track's box even unseen), is
        # where the search has nothing to add; only an unseen low-score guess may be bettered.
        taken = msg.xyxy[(index >= 0) | np.array([o != PROPOSAL for o in msg.origins], bool).reshape(len(index))]
        if len(found) and len(taken):
            free = box_iou(found, taken).max(axis=1) < 0.5
            found, labels, classes = found[free], labels[free], [c for c, f in zip(classes, free) if f]
        return found, tuple(labels.tolist()), classes, negatives


def embed(model: Embedder, msgs: list[FrameDetections], search: Search | None = None) -> list[FrameEmbeddings]:
    crops = [c for m in msgs for c in crop(m.image, m.xyxy)]
    vectors = model.embed(crops) if crops else np.zeros((0, model.dim), np.float32)
    out, start = [], 0
    for m in msgs:
        out.append(FrameEmbeddings(m.frame, m.xyxy, m.scores, m.det_labels,
                                   vectors[start:start + len(m)], origins=m.origins))
        start += len(m)
    return [searched(model, m, search) for m in out] if search is not None else out


def searched(model: Embedder, msg: FrameEmbeddings, search: Search) -> FrameEmbeddings:
    """msg with the search's windows appended, each embedded like any box (origin proposal, det_label search,
    or VOUCHED + class when vouched for); the reference's background windows are embedded in the same batch."""
    found, labels, classes, negatives = search.windows(msg, msg.embeddings)
    search.learnt = negatives
    if len(found) + len(negatives) == 0:
        return msg
    both = model.embed(crop(msg.image, np.vstack([found, negatives])))
    x, xn = both[:len(found)], both[len(found):]
    later = search.reference is not None and search.learn_proposed
    if search.reference is not None and len(negatives) and not later:
        search.reference.add_background(normalize(xn))
    if len(found) == 0:
        if later and len(negatives):
            search.reference.add_background(normalize(xn))
        return msg
    if search.refine:  # nudge windows near a class towards its centroid, a few crops each
        gate = search.gate
        found, x = refine(found, x, lambda b: model.embed(crop(msg.image, b)), lambda v: gate.space(normalize(v)),
                          gate.centroids, gate.effective_radii(), rounds=search.refine)
    if search.reference is not None:  # the crops' kNN decides which windows are vouched for
        ok = search.reference.vouch(normalize(x), classes, search.gate.space)
        labels = tuple(VOUCHED + c if v else SEARCH_LABEL for c, v in zip(classes, ok))
        if later and len(negatives):  # not on a window vouched for on this frame
            free = box_iou(negatives, found[ok]).max(axis=1, initial=0) < 0.3 if ok.any() else np.ones(len(xn), bool)
            search.reference.add_background(normalize(xn[free]))
            search.learnt = negatives[free]
    k = len(found)
    return FrameEmbeddings(msg.frame, np.vstack([msg.xyxy, found]).astype(np.float32),
                           np.concatenate([msg.scores, np.full(k, SEARCH_SCORE, np.float32)]),
                           msg.det_labels + labels,
                           np.vstack([msg.embeddings, x]),
                           origins=msg.origins + (PROPOSAL,) * k)


def build_search(stage: StageProcess, model: Embedder) -> tuple[Search | None, Inbox | None]:
    """embed.search: the classes to start from (gate.memory) and the subscription to the cluster's updates."""
    s, g = stage.settings.embed, stage.settings.gate
    if not s.search:
        return None, None
    # another runtime (models/compiled.py) wraps the torch model it was exported from: the map comes from that
    network = model if hasattr(model, "feature_map") else getattr(model, "model", model)
    # the map ranks the windows; their crops' kNN vouches for them (models/reference.py)
    search = Search(network, load_memory(g.memory, g.set_size, g.radius_pool),
                    ClassSearch(s.search_per_class, s.search_limit, accept="none"), s.search_scale, s.search_refine,
                    s.search_snap, Reference())
    return search, Inbox(stage.socket("classes"), "embed/classes", (ClassUpdate,))


def run(stage: StageProcess) -> int:
    s = stage.settings.embed
    limit_threads(s.threads)
    model = build_embedder(s.model, s.runtime, s.threads, weights=s.weights, device=s.device, **s.options)
    model.embed([np.zeros((64, 32, 3), np.uint8)])  # the slow first call before joining the pool (see detect)
    search, classes = build_search(stage, model)
    hwm = 1 if stage.live else None  # live: see detect
    inbox = stage.inbox(stage.socket("to_embed", hwm=hwm), "embed",
                        (FrameDetections, EndOfStream))
    out = stage.socket("embeddings", hwm=hwm)
    stage.started(model=s.model, dim=model.dim, runtime=model.runtime)
    if search is not None:
        stage.log.info("class search on: %d windows per class, at most %d a frame", s.search_per_class, s.search_limit)

    def step(batch: list[FrameDetections]) -> list[FrameEmbeddings]:
        while classes is not None and classes.sock.poll(0):  # the newest classes before each batch
            update = classes.recv(0)
            reason = search.update(update, model.dim) if update is not None else None
            if reason:
                classes.reject(reason)
            elif update is not None:
                stage.log.info("search: applied class update %d: %d classes", update.version, len(update))
        return embed(model, batch, search)

    frames = stage.relay_batches(inbox, out, s.batch_frames, 0 if stage.live else s.batch_timeout_ms, step)
    stage.emit("stage_stopped", frames=frames, rejected=inbox.rejected + (classes.rejected if classes else 0))
    return 0
