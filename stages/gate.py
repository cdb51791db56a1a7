"""Gate stage (SKZC's SDDC box labeler): seen class or unseen for every box; unseen ones go to clustering."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zmq

from models.boxes import crop, example, pack
from models.openworld import TrackAges, explained
from models.sddc import UNSEEN, Gate, load_memory, normalize
from models.tracks import BoxTracker, LabelVotes
from stages.config import ConfigError
from stages.process import StageProcess
from stream.messages import ClassUpdate, EndOfStream, FrameEmbeddings, LabeledFrame, UnseenBatch
from stream.sockets import Inbox, send


def label(gate: Gate, msg: FrameEmbeddings, tracker: BoxTracker | None = None, votes: LabelVotes | None = None,
          thumb: int = 128, ages: TrackAges | None = None, persist: int = 5) -> tuple[LabeledFrame, UnseenBatch]:
    """Labels every box of one frame; returns the labeled frame and what goes to clustering.

    With a tracker, boxes get track ids and `votes` smooths each track's label; only boxes of
    confirmed tracks whose voted label is unseen go to clustering, so a class can be required to
    span several tracks. Without one, every unseen box goes. Proposal and motion boxes are kept only
    when explained (models/openworld.py: seen as a class, or unseen on a track `persist` frames old);
    the labeled frame holds only kept boxes."""
    n = len(msg)
    x = normalize(msg.embeddings) if n else np.zeros((0, msg.embeddings.shape[1]), np.float32)
    index, distance = gate.classify(x)
    labels = gate.labels(index)
    detector = np.array([o == "detector" for o in msg.origins], bool).reshape(n)
    # ByteTrack starts tracks only from confident boxes; a foreground region is a sure "something"
    track_scores = np.where(np.array([o == "motion" for o in msg.origins], bool).reshape(n), 1.0, msg.scores)
    track = tracker.update(msg.xyxy, track_scores) if tracker is not None else np.full(n, -1, np.int64)
    if votes is not None:
        labels = votes.vote(track, labels)
    seen = np.array([lab != UNSEEN for lab in labels], bool)
    age = ages.update(track) if ages is not None else np.where(track >= 0, persist, 0)
    keep = explained(msg.origins, seen, age, persist) if not detector.all() else np.ones(n, bool)
    labeled = LabeledFrame(msg.source, msg.index, msg.ts, msg.image, msg.xyxy, msg.scores, msg.det_labels,
                           tuple(labels), seen, distance, track, origins=msg.origins)[keep]
    out = keep & ~seen & (track >= 0) if tracker is not None else keep & ~seen
    thumbs, hw = pack([example(c, thumb) for c in crop(msg.image, msg.xyxy[out])], thumb)
    return labeled, UnseenBatch(msg.source, msg.index, x[out], track[out], thumbs, hw)


def apply_update(update: ClassUpdate, set_size: int, pool: float) -> Gate:
    """The gate's classes become exactly the update's (the cluster stage owns the class memory)."""
    return Gate(list(update.names), update.centroids.astype(np.float32), update.radii.astype(np.float32),
                update.sizes.astype(np.int64), update.set_ids.astype(np.int64), set_size, pool=pool)


def run(stage: StageProcess) -> int:
    s = stage.settings.gate
    hwm = 1 if stage.live else None  # live: queues of one all along the frame path (see detect)
    inbox = stage.inbox(stage.socket(zmq.PULL, "embeddings", bind=False, hwm=hwm), "gate",
                        (FrameEmbeddings, EndOfStream))
    classes = Inbox(stage.socket(zmq.SUB, "classes", bind=False), "gate/classes", (ClassUpdate,))
    to_sink = stage.socket(zmq.PUSH, "labeled", bind=False, hwm=hwm)
    to_cluster = stage.socket(zmq.PUSH, "unseen", bind=False)
    gate = load_memory(s.memory, s.set_size, s.radius_pool)
    trackers: dict[str, BoxTracker] = {}  # one per source
    ages: dict[str, TrackAges] = {}
    votes = LabelVotes(s.vote_window, s.vote_min, s.vote_share) if s.track else None
    dim = gate.centroids.shape[1] if len(gate) else None  # the run's embedding dim: the memory's or the first frame's
    poller = zmq.Poller()
    poller.register(inbox.sock, zmq.POLLIN)
    poller.register(classes.sock, zmq.POLLIN)
    stage.started(alpha=s.alpha, set_size=s.set_size)
    frames = dropped = 0  # dropped: proposal and motion boxes the gate could not explain
    while True:
        ready = dict(poller.poll(200))
        if classes.sock in ready:  # class updates first, so a new class labels the very next frame
            update = classes.recv(0)
            # Every valid snapshot applies, in arrival order (one publisher, one ordered stream): a version
            # test would let a forged huge version, or a restarted cluster counting from 1, stall the gate.
            if update is not None and len(update) and update.centroids.shape[1] != dim:
                classes.reject(f"class update of dim {update.centroids.shape[1]}, this run's is {dim}")
            elif update is not None:
                gate = apply_update(update, s.set_size, s.radius_pool)
                if votes is not None:
                    votes.forget_except(set(gate.names))  # renamed, merged or deleted classes
                stage.log.info("applied class update %d: %d classes", update.version, len(gate))
        if inbox.sock not in ready:
            if stage.drained:
                break  # supervised: told to stop and nothing left
            continue
        msg = inbox.recv(0)
        if isinstance(msg, EndOfStream):
            send(to_cluster, msg)
            send(to_sink, msg)
            break
        if msg is not None and dim not in (None, msg.embeddings.shape[1]):
            inbox.reject(f"embeddings of dim {msg.embeddings.shape[1]}, this run's is {dim}")
        elif msg is not None:
            dim = msg.embeddings.shape[1]
            if s.track and msg.source not in trackers:
                trackers[msg.source] = BoxTracker()
            tracker = trackers.get(msg.source)
            labeled, unseen = label(gate, msg, tracker, votes, s.thumb, ages.setdefault(msg.source, TrackAges()),
                                    s.persist)
            dropped += len(msg) - len(labeled)
            send(to_sink, labeled)
            if len(unseen):
                send(to_cluster, unseen)
            frames += 1
    stage.emit("stage_stopped", frames=frames, rejected=inbox.rejected + classes.rejected, classes=len(gate),
               dropped=dropped)
    return 0
