"""Gate stage (SKZC's SDDC box labeler): seen class or unseen for every box; unseen ones go to clustering."""
from __future__ import annotations

import dataclasses
import time
from collections import deque
from pathlib import Path

import numpy as np
import zmq

from models.boxes import crop, example, pack
from models.openworld import TrackAges, explained, feeds, fragments, loose
from models.sddc import UNSEEN, Gate, gate_of_snapshot, load_memory, normalize
from models.search import VOUCHED, vouch
from models.tracks import BoxTracker, LabelVotes
from stages.config import ConfigError
from stages.process import StageProcess
from stream.messages import ClassUpdate, EndOfStream, FrameEmbeddings, LabeledFrame, UnseenBatch
from stream.reorder import Reorder
from stream.sockets import Inbox, send


def label(gate: Gate, msg: FrameEmbeddings, tracker: BoxTracker | None = None, votes: LabelVotes | None = None,
          thumb: int = 128, ages: TrackAges | None = None, persist: int = 5,
          steady: int = 0) -> tuple[LabeledFrame, UnseenBatch]:
    """Labels every box of one frame; returns the labeled frame and what goes to clustering.

    With a tracker, boxes get track ids and `votes` smooths each track's label; only boxes of
    confirmed tracks whose voted label is unseen go to clustering, so a class can be required to
    span several tracks. Without one, every unseen box goes. Proposal and motion boxes are kept only
    when explained (models/openworld.py: a low-score proposal when seen as a class; a motion box on a
    track `persist` frames old whose box was steady `steady` frames in a row and that has moved (not a
    ghost: where it began looks different now); never a fragment of a
    larger kept box; a low-score proposal never around a smaller kept box), and feed clustering only
    from steady tracks; the labeled frame holds only kept boxes."""
    n = len(msg)
    x = normalize(msg.embeddings) if n else np.zeros((0, msg.embeddings.shape[1]), np.float32)
    index, distance = gate.classify(x)
    # class-search windows the map vouched for: seen as that class when the crop's nearest class agrees
    if any(lab.startswith(VOUCHED) for lab in msg.det_labels) and len(gate):
        index = vouch(gate.centroids, gate.space(x), msg.det_labels, gate.names, index, msg.origins)
    labels = gate.labels(index)
    detector = np.array([o == "detector" for o in msg.origins], bool).reshape(n)
    motion = np.array([o == "motion" for o in msg.origins], bool).reshape(n)
    # ByteTrack starts tracks only from confident boxes; a foreground region is a sure "something"
    track_scores = np.where(motion, 1.0, msg.scores)
    track = tracker.update(msg.xyxy, track_scores) if tracker is not None else np.full(n, -1, np.int64)
    if votes is not None:
        labels = votes.vote(track, labels)
    seen = np.array([lab != UNSEEN for lab in labels], bool)
    age, still = ages.observe(track, msg.xyxy) if ages is not None else (np.where(track >= 0, persist, 0),) * 2
    keep = np.ones(n, bool)
    proposals = not detector.all()  # class-agnostic boxes in this frame: the open-world rules apply
    if proposals:
        moved = ages.moved(track, msg.xyxy, msg.image, motion) if ages is not None else None
        keep = explained(msg.origins, seen, age, persist, still, steady, moved)
        keep &= ~fragments(msg.xyxy, msg.origins, keep)
        keep &= ~loose(msg.xyxy, msg.origins, keep)
    labeled = LabeledFrame(msg.frame, msg.xyxy, msg.scores, msg.det_labels,
                           tuple(labels), seen, distance, track, origins=msg.origins)[keep]
    out = keep & ~seen & (track >= 0) if tracker is not None else keep & ~seen
    if proposals:
        out &= feeds(msg.origins, still, steady)
    thumbs, hw = pack([example(c, thumb) for c in crop(msg.image, msg.xyxy[out])], thumb)
    return labeled, UnseenBatch(msg.source, msg.index, x[out], track[out], thumbs, hw)


def apply_update(update: ClassUpdate, set_size: int, pool: float) -> Gate:
    """The gate's classes become exactly the update's (the cluster stage owns the class memory)."""
    return gate_of_snapshot(update, set_size, pool)


class Relay:
    """Detections from every detect worker to whichever embed worker is free, as raw messages (the
    embed stage checks them): the gate is the stable middle, so workers on both sides only connect.
    A message waits here while no embed worker can take one (backpressure back to the detectors)."""

    def __init__(self, stage: StageProcess, poller: zmq.Poller, hwm: int | None):
        self.inp, self.out, self.poller = stage.socket("detections", hwm=hwm), stage.socket("to_embed", hwm=hwm), poller
        self.pending = None
        poller.register(self.inp, zmq.POLLIN)

    def step(self) -> None:
        """Moves what can move now, then waits (in the caller's poll) on whichever side blocks."""
        while True:
            if self.pending is None:
                if not self.inp.poll(0):
                    break
                self.pending = self.inp.recv_multipart(copy=False)
            if not self.out.poll(0, zmq.POLLOUT):
                break
            self.out.send_multipart(self.pending, copy=False)
            self.pending = None
        self.poller.register(self.inp, zmq.POLLIN if self.pending is None else 0)  # 0: not polled
        self.poller.register(self.out, 0 if self.pending is None else zmq.POLLOUT)


class Rounds:
    """File sources: every `period` frames of a source the gate asks the cluster stage for a discovery
    round (the frame's UnseenBatch says `round`) and labels no further frame until the classes come back,
    so which classes label which frame depends on the file alone, not on how fast the machine is. Live
    sources never wait (period 0). While waiting the request is repeated, without its rows, every
    `again_s` (an answer a restarting cluster stage or a slow subscription lost; the cluster stage runs a
    round once and answers a repeat with its classes); after `timeout` seconds the gate goes on, counted."""

    def __init__(self, period: int, timeout: float, again_s: float = 2.0):
        self.period, self.timeout, self.again_s = period, timeout, again_s
        self.deadline: float | None = None  # while waiting: when to give up
        self.again_at = 0.0
        self.request: UnseenBatch | None = None
        self.unanswered = 0

    def due(self, index: int) -> bool:
        """Frame `index` (in order) ends a period: ask for a round."""
        return self.period > 0 and index % self.period == self.period - 1

    def ask(self, request: UnseenBatch, now: float) -> None:
        self.request = dataclasses.replace(request, embeddings=request.embeddings[:0], track=request.track[:0],
                                           thumbs=None, thumb_hw=None)
        self.deadline, self.again_at = now + self.timeout, now + self.again_s

    @property
    def waiting(self) -> bool:
        return self.deadline is not None

    def answered(self) -> None:
        self.deadline = None

    def again(self, now: float) -> UnseenBatch | None:
        """The request to send once more (no rows), when waiting for `again_s` since it was last sent."""
        if self.deadline is None or now < self.again_at:
            return None
        self.again_at = now + self.again_s
        return self.request

    def expired(self, now: float) -> bool:
        """True (once) when the round asked for has not been answered in time; the gate goes on."""
        if self.deadline is None or now < self.deadline:
            return False
        self.deadline, self.unanswered = None, self.unanswered + 1
        return True

    def stop(self) -> None:
        """The stream ends: nothing more to wait for (the cluster stage runs a last round at its end)."""
        self.period, self.deadline = 0, None


class Sources:
    """Per source: the order buffer, the tracker and the label votes (track ids are per source)."""

    def __init__(self, stage: StageProcess):
        s = stage.settings.gate
        self.stage, self.s = stage, s
        live = stage.live
        self.max_held = 1 if live else s.reorder_frames  # live: frames are dropped on purpose, never wait
        self.start = 0 if stage.attempt == 0 else None  # restarted: where each stream stands is unknown
        self.order: dict[str, Reorder] = {}
        self.trackers: dict[str, BoxTracker] = {}
        self.votes: dict[str, LabelVotes] = {}
        self.ages: dict[str, TrackAges] = {}  # frames each track has lived (proposals need a persisting track)

    def push(self, msg, now: float) -> list[tuple[object, bool]]:
        if msg.source not in self.order:
            self.order[msg.source] = Reorder(self.max_held, self.s.reorder_s, self.start)
            if self.s.track:
                self.trackers[msg.source] = BoxTracker()
                self.votes[msg.source] = LabelVotes(self.s.vote_window, self.s.vote_min, self.s.vote_share)
        return self.order[msg.source].push(msg.index, msg, now)

    def release(self, now: float, flush: bool = False) -> list[tuple[object, bool]]:
        return [item for o in self.order.values() for item in o.release(now, flush)]

    def report(self) -> None:
        for source, o in self.order.items():
            self.stage.stats.set("reorder_held", len(o.held), source)
            self.stage.stats.total("reorder_skipped", o.skipped, source)

    @property
    def skipped(self) -> int:
        return sum(o.skipped for o in self.order.values())


def run(stage: StageProcess) -> int:
    s = stage.settings.gate
    hwm = 1 if stage.live else None  # live: queues of one all along the frame path (see detect)
    poller = zmq.Poller()
    relay = Relay(stage, poller, hwm)
    inbox = stage.inbox(stage.socket("embeddings", hwm=hwm), "gate", (FrameEmbeddings, EndOfStream))
    classes = Inbox(stage.socket("classes"), "gate/classes", (ClassUpdate,))
    to_sink = stage.socket("labeled", hwm=hwm)
    to_cluster = stage.socket("unseen")
    gate = load_memory(s.memory, s.set_size, s.radius_pool)
    sources = Sources(stage)
    dim = gate.centroids.shape[1] if len(gate) else None  # the run's embedding dim: the memory's or the first frame's
    poller.register(inbox.sock, zmq.POLLIN)
    poller.register(classes.sock, zmq.POLLIN)
    stage.started(alpha=s.alpha, set_size=s.set_size)
    frames = dropped = 0  # dropped: proposal and motion boxes the gate could not explain
    c = stage.settings.cluster
    rounds = Rounds(0 if stage.live else c.period_frames, c.round_timeout_s)
    pending: deque = deque()  # frames released in order, not yet labelled (held while a round is awaited)

    def label_and_send(ready: list[tuple[FrameEmbeddings, bool]]) -> None:
        nonlocal frames, dropped
        pending.extend(ready)
        while pending and not rounds.waiting:
            msg, in_order = pending.popleft()
            tracker = sources.trackers.get(msg.source) if in_order else None  # a late frame: untracked
            labeled, unseen = label(gate, msg, tracker, sources.votes.get(msg.source) if in_order else None, s.thumb,
                                    sources.ages.setdefault(msg.source, TrackAges()) if in_order else None, s.persist,
                                    s.steady)
            dropped += len(msg) - len(labeled)
            send(to_sink, labeled)
            ask = in_order and rounds.due(msg.index)
            if ask:
                unseen = dataclasses.replace(unseen, round=True)
                rounds.ask(unseen, time.monotonic())
            if len(unseen) or ask:
                send(to_cluster, unseen)
            frames += 1
            stage.stats.inc("frames", source=msg.source)
        # while a round is awaited no frame is read: the file's frames wait upstream (backpressure)
        poller.register(inbox.sock, 0 if rounds.waiting else zmq.POLLIN)

    while True:
        ready = dict(poller.poll(200))
        relay.step()
        repeat = rounds.again(time.monotonic())
        if repeat is not None:
            send(to_cluster, repeat)
        if rounds.expired(time.monotonic()):
            stage.log.warning("no classes from the cluster stage within %.0f s of asking for a round; going on",
                              rounds.timeout)
            label_and_send([])
        if classes.sock in ready:  # class updates first, so a new class labels the very next frame
            update = classes.recv(0)
            # Every valid snapshot applies, in arrival order (one publisher, one ordered stream): a version
            # test would let a forged huge version, or a restarted cluster counting from 1, stall the gate.
            if update is not None and len(update) and update.centroids.shape[1] != dim:
                classes.reject(f"class update of dim {update.centroids.shape[1]}, this run's is {dim}")
            elif update is not None:
                gate = apply_update(update, s.set_size, s.radius_pool)
                for votes in sources.votes.values():
                    votes.forget_except(set(gate.names))  # renamed, merged or deleted classes
                stage.log.info("applied class update %d: %d classes", update.version, len(gate))
                stage.stats.set("classes_known", len(gate))
            if update is not None and rounds.waiting:  # the round asked for (or a person's edit): go on
                rounds.answered()
                label_and_send([])
        label_and_send(sources.release(time.monotonic()))  # frames whose missing predecessor was given up on
        sources.report()
        stage.stats.total("rejected", inbox.rejected + classes.rejected)
        if inbox.sock not in ready:
            if stage.drained and rounds.waiting:  # told to stop: no more rounds; label and read what waited
                rounds.stop()
                label_and_send([])
            elif stage.drained:  # supervised: told to stop and nothing left (capture saw every frame logged)
                label_and_send(sources.release(time.monotonic(), flush=True))
                break
            continue
        msg = inbox.recv(0)
        if isinstance(msg, EndOfStream):
            rounds.stop()  # the cluster stage runs its last round on the end of stream
            label_and_send(sources.release(time.monotonic(), flush=True))
            send(to_cluster, msg)
            send(to_sink, msg)
            break
        if msg is not None and dim not in (None, msg.embeddings.shape[1]):
            inbox.reject(f"embeddings of dim {msg.embeddings.shape[1]}, this run's is {dim}")
        elif msg is not None:
            dim = msg.embeddings.shape[1]
            label_and_send(sources.push(msg, time.monotonic()))
    if sources.skipped:
        stage.log.warning("gave up waiting for %d frame(s) (lost with a worker?)", sources.skipped)
    stage.emit("stage_stopped", frames=frames, rejected=inbox.rejected + classes.rejected, classes=len(gate),
               skipped=sources.skipped, dropped=dropped, unanswered=rounds.unanswered)
    return 0
