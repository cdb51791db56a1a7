"""Sink stage: writes the JSONL event log, shows the annotated window and saves the annotated video(s)."""
from __future__ import annotations

import json
import logging
import os
import time

import zmq

from stages.lifecycle import QUIT, flags
from stages.process import Committed, StageProcess
from stages.tally import Tally, run_started
from stages.window import Display, Hud
from stream.events import EventLog
from stream.messages import EndOfStream, Event, LabeledFrame
from stream.reorder import Reorder
from stream.sockets import send


def records(msg: LabeledFrame, now: float) -> list[dict]:
    """One frame record, then one detection record per box."""
    out = [{"type": "frame", "ts": now, "source": msg.source, "frame": msg.index, "capture_ts": msg.ts,
            "latency_s": round(now - msg.ts, 4), "detections": len(msg),
            "unseen": int((~msg.seen).sum())}]
    for i in range(len(msg)):
        out.append({"type": "detection", "ts": now, "source": msg.source, "frame": msg.index,
                    "bbox": [round(float(v), 1) for v in msg.xyxy[i]], "label": msg.labels[i],
                    "seen": bool(msg.seen[i]), "distance": float(msg.distance[i]),
                    "score": round(float(msg.scores[i]), 4), "det_label": msg.det_labels[i],
                    "track": int(msg.track[i]), "origin": msg.origins[i]})
    return out


class Ledger:
    """What the sink has logged, per source: frames already written are not written again (a replay
    after a restart), and capture hears of every commit. A restarted sink reads its own log back."""

    def __init__(self, stage: StageProcess, log_path: str | None, run_id: str | None = None):
        self.stage = stage
        self.acks = stage.socket("acks", hwm=1000) if stage.supervised else None
        if self.acks is not None:
            self.acks.setsockopt(zmq.LINGER, 0)  # capture leaves first: acks nobody reads must not hold us
        self.committed: dict[str, Committed] = {}
        self.duplicates, self.summarised = 0, 0.0
        if stage.attempt and log_path and os.path.exists(log_path):
            for rec in read_back(log_path):
                if rec.get("type") == "frame" and rec.get("run") == run_id:  # the log may hold earlier runs
                    self.committed.setdefault(rec["source"], Committed()).add(int(rec["frame"]))
            stage.log.info("restarted: %d frame(s) already in %s", self.logged(), log_path)

    def logged(self) -> int:
        return sum(c.below + len(c.above) for c in self.committed.values())

    def seen(self, source: str, index: int) -> bool:
        if index in self.committed.get(source, ()):
            self.duplicates += 1
            self._ack(source, [index])  # capture replayed it: it may have missed the first ack
            return True
        return False

    def commit(self, source: str, index: int) -> None:
        self.committed.setdefault(source, Committed()).add(index)
        self._ack(source, [index])

    def summarise(self, live: bool) -> None:
        """Once a second, everything logged (file mode) or just the low mark (live): a restarted
        capture learns where to go on from it."""
        if time.monotonic() - self.summarised >= 1.0:
            self.summarised = time.monotonic()
            for source, c in self.committed.items():
                if live and len(c.above) > 2048:
                    c.merge(sorted(c.above)[-1024])  # gaps of a live stream are drops, never replayed
                self._ack(source, [] if live else sorted(c.above))

    def _ack(self, source: str, frames: list[int]) -> None:
        if self.acks is None:
            return
        c = self.committed[source]
        try:
            send(self.acks, Event({"type": "committed", "ts": time.time(), "source": source, "below": c.below,
                                   "high": c.high, "frames": frames}), zmq.NOBLOCK)
        except zmq.Again:
            pass  # capture is away (restarting): the next summary tells it


class Order:
    """Each source's frames are logged in index order: the gate sends them in order, and nothing after it
    reorders, until a restart on the frame path (this sink, or detect / embed / gate: stage_restarted)
    loses frames in flight that capture then replays behind their successors. From then on the sink
    holds a source's frames that come after a missing one until it arrives, within the gate's bound
    (gate.reorder_frames, gate.reorder_s; live: never waits); a frame that still comes after its turn is
    logged late. Before any restart this is a pass-through (a corrupt frame's gap is waited for by the
    gate alone)."""

    def __init__(self, max_held: int, max_wait_s: float):
        self.max_held, self.max_wait_s = max_held, max_wait_s
        self.guards: dict[str, Reorder] | None = None  # None: no restart yet

    def arm(self, ledger: Ledger) -> None:
        """A restart: every source waits from one past its highest frame logged (the log was in order
        up to here); a source with none logged yet lets its first frames decide."""
        if self.guards is None:
            self.guards = {source: Reorder(self.max_held, self.max_wait_s, c.high)
                           for source, c in ledger.committed.items()}

    def push(self, msg: LabeledFrame, now: float) -> list[LabeledFrame]:
        if self.guards is None:
            return [msg]
        guard = self.guards.setdefault(msg.source, Reorder(self.max_held, self.max_wait_s, None))
        return [m for m, _ in guard.push(msg.index, msg, now)]

    def release(self, now: float, flush: bool = False) -> list[LabeledFrame]:
        return [m for g in (self.guards or {}).values() for m, _ in g.release(now, flush)]

    @property
    def held(self) -> int:
        return sum(len(g.held) for g in (self.guards or {}).values())


def read_back(path: str) -> list[dict]:
    """The records of an existing log; a last line cut short by a kill is removed from the file."""
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
    out = []
    for line in data[:end].splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def run(stage: StageProcess) -> int:
    s = stage.settings.sink
    frames_in = stage.inbox(stage.socket("labeled", hwm=1 if stage.live else None), "sink",
                            (LabeledFrame, EndOfStream))
    events_in = stage.inbox(stage.events_in, "sink/events", (Event, EndOfStream))
    window = s.window if not s.headless and os.environ.get("DISPLAY") else None
    if not s.headless and window is None:
        stage.log.warning("no DISPLAY: running without a window (use --headless to silence this)")
    ledger = Ledger(stage, s.events, s.run_id)
    log = EventLog(s.events, append=s.append or stage.attempt > 0, run=s.run_id)
    if not stage.attempt:
        log.write(run_started(stage.settings))
    log.write({"type": "stage_started", "ts": time.time(), "stage": "sink", "pid": os.getpid()})
    tally = Tally(stage.settings, frames=ledger.logged())
    parent = os.getppid()
    display = Display(window, s.save if not stage.attempt else None, stage.settings.capture.source)
    hud = Hud()
    if s.save and stage.attempt:
        stage.log.warning("restarted: the annotated video %s is not continued", s.save)
    poller = zmq.Poller()
    poller.register(frames_in.sock, zmq.POLLIN)
    poller.register(events_in.sock, zmq.POLLIN)
    frames, frames_done, events_done = 0, False, False  # done: end of stream from the gate / the cluster
    order = Order(1 if stage.live else stage.settings.gate.reorder_frames, stage.settings.gate.reorder_s)
    if stage.attempt:
        order.arm(ledger)

    def write(ready: list[LabeledFrame]) -> None:
        nonlocal frames
        for msg in ready:
            if ledger.seen(msg.source, msg.index):
                continue
            now = time.time()
            log.write_many(records(msg, now))  # one write: a kill leaves a frame's records whole or absent
            ledger.commit(msg.source, msg.index)
            hud.on_frame(now, msg.source)
            tally.on_frame(now)
            frames += 1
            stage.stats.inc("frames", source=msg.source)
            stage.stats.observe("latency", now - msg.ts, msg.source)
            if display.active:
                display.show(msg, hud, frames_in.rejected + events_in.rejected)
    try:
        while not (frames_done and events_done) and not display.closed:
            display.idle()
            ready = dict(poller.poll(200))
            ledger.summarise(stage.live)
            tally.status(ledger.duplicates, frames_in.rejected + events_in.rejected)
            stage.stats.total("rejected", frames_in.rejected + events_in.rejected)
            write(order.release(time.monotonic()))
            if not ready and stage.drained:
                break  # supervised: told to stop, and nothing left to write
            msg = events_in.recv(0) if events_in.sock in ready else None
            events_done |= isinstance(msg, EndOfStream)
            if isinstance(msg, Event):
                log.write(msg.record)
                hud.on_event(msg.record)
                tally.on_event(msg.record)
                if msg.record.get("type") == "frame_dropped" and msg.record.get("stage") == "detect":
                    for index in msg.record.get("frames", ()):  # accounted for: capture need not wait for them
                        ledger.commit(msg.record.get("source", ""), int(index))
                if msg.record.get("type") == "stage_restarted" and msg.record.get("stage") in ("detect", "embed", "gate"):
                    order.arm(ledger)
            msg = frames_in.recv(0) if frames_in.sock in ready else None
            frames_done |= isinstance(msg, EndOfStream)
            if isinstance(msg, LabeledFrame) and not ledger.seen(msg.source, msg.index):
                write(order.push(msg, time.monotonic()))
        write(order.release(time.monotonic(), flush=True))
        while (msg := events_in.recv(100)) is not None:  # late stage_stopped records
            if isinstance(msg, Event):
                log.write(msg.record)
                tally.on_event(msg.record)
        rejected, reason = frames_in.rejected + events_in.rejected, "window closed" if display.closed else "end"
        log.write({"type": "stage_stopped", "ts": time.time(), "stage": "sink", "frames": frames,
                   "duplicates": ledger.duplicates, "rejected": rejected, "reason": reason})
        log.write(tally.summary(ledger.duplicates, rejected, reason))
        tally.status(ledger.duplicates, rejected, done=True)
    finally:
        display.close()
        log.close()
        if os.getppid() != parent or flags["terminated"]:  # the supervisor died (SIGKILL; its death sends us
            tally.remove()  # SIGTERM): nobody reads the status, and the run's folder must be empty for the
            #                 last stage out to remove it
    return QUIT if display.closed and stage.supervised else 0
