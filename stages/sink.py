"""Sink stage: writes the JSONL event log, shows the annotated window and saves the annotated video."""
from __future__ import annotations

import json
import logging
import os
import time
from collections import deque

import cv2
import zmq

from stages.lifecycle import QUIT, flags
from stages.process import Committed, StageProcess
from stages.tally import Tally, run_started
from stages.window import display_reachable, font_dir, waiting_screen
from stream.events import EventLog
from stream.messages import EndOfStream, Event, LabeledFrame
from stream.overlay import ClassBook, Overlay
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


class Display:
    """The window and the video file; either may be off. `closed` turns true when the user quits. A window
    whose display cannot be reached is one warning and no window (Qt would abort the process); until the
    first frame it says that the models are loading."""

    def __init__(self, window: str | None, save: str | None):
        self.window, self.save = window, save
        self.writer = self.overlay = None
        self.closed = self.shown = False
        if window and not display_reachable(os.environ.get("DISPLAY", "")):
            logging.getLogger("owd.sink").warning("display %r cannot be reached: running without a window",
                                                  os.environ.get("DISPLAY", ""))
            self.window = None
        if self.window:
            if not os.path.isdir(os.environ.get("QT_QPA_FONTDIR", "")):  # cv2 points Qt at a font folder its
                os.environ["QT_QPA_FONTDIR"] = font_dir()                  # wheel lacks: a warning per repaint
            cv2.namedWindow(self.window, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
            screen = waiting_screen()
            cv2.resizeWindow(self.window, screen.shape[1], screen.shape[0])
            cv2.imshow(self.window, screen)
            self.idle()

    @property
    def active(self) -> bool:
        return bool(self.window or self.save)

    def idle(self) -> None:
        """Between frames: the window repaints and hears q / Esc (before the first frame, too)."""
        if self.window and cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.closed = True

    def show(self, msg: LabeledFrame, hud: "Hud", rejected: int) -> None:
        size = (msg.image.shape[1], msg.image.shape[0])
        if self.overlay is None or self.overlay.wh != size:  # a folder's images may differ in size
            self.overlay = Overlay(size)
        image = self.overlay.draw(msg, hud.book, hud.lines(msg.index, rejected))
        if self.save:
            if self.writer is None:
                fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.save.endswith(".mp4") else "MJPG"))
                self.writer = cv2.VideoWriter(self.save, fourcc, hud.source_fps or 25.0, size)
                if not self.writer.isOpened():
                    raise OSError(f"cannot write video {self.save}")
            self.writer.write(image)
        if self.window:
            if not self.shown:
                cv2.resizeWindow(self.window, image.shape[1], image.shape[0])
                self.shown = True
            cv2.imshow(self.window, image)
            self.idle()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        if self.window:
            cv2.destroyAllWindows()


class Hud:
    """What the overlay's corner says: processing rate, drops, rejected messages, classes known (loaded
    from the class memory and discovered), and each class's colour id."""

    def __init__(self):
        self.arrivals: deque[float] = deque()  # wall times of the last frames: >= 64 of them and >= 10 s
        self.book = ClassBook()
        self.loaded = 0  # the cluster stage's count at start, for a run whose log gives no names
        self.dropped_by: dict[str, int] = {}  # stage -> its running total (capture and, live, detect drop)
        self.source_fps = 0.0

    def on_event(self, rec: dict) -> None:
        kind, name = rec["type"], rec.get("class")
        if kind == "frame_dropped":
            self.dropped_by[rec.get("stage", "")] = rec.get("total", 0)
        elif kind in ("class_discovered", "class_updated") and isinstance(name, str):
            self.book.id(name)
        elif kind == "class_renamed" and isinstance(name, str) and isinstance(rec.get("old"), str):
            self.book.rename(rec["old"], name)
        elif kind == "class_merged" and isinstance(rec.get("merged"), str):
            self.book.remove(rec["merged"])
        elif kind == "class_deleted" and isinstance(name, str):
            self.book.remove(name)
        elif kind == "stage_started" and rec.get("stage") == "cluster":
            names = rec.get("names")  # from the wire: any JSON value
            for n in names if isinstance(names, list) else ():
                if isinstance(n, str):
                    self.book.id(n)
            self.loaded = rec["classes"] if isinstance(rec.get("classes"), int) else 0
        elif kind == "stage_started" and rec.get("stage") == "capture":
            fps = rec.get("fps")
            self.source_fps = float(fps) if isinstance(fps, (int, float)) and 0 < fps <= 1000 else 0.0

    def on_frame(self, now: float) -> None:
        self.arrivals.append(now)
        while len(self.arrivals) > 65 and now - self.arrivals[1] >= 10.0:
            self.arrivals.popleft()

    @property
    def fps(self) -> float | None:
        """Frames completed over wall time, over the last >= 10 s and >= 64 frames (frames arrive in
        bursts of a batch: a short window would measure the burst); None until 16 frames are in."""
        if len(self.arrivals) < 16 or self.arrivals[-1] <= self.arrivals[0]:
            return None
        return (len(self.arrivals) - 1) / (self.arrivals[-1] - self.arrivals[0])

    def lines(self, index: int, rejected: int) -> list[str]:
        fps = f"{self.fps:5.1f}" if self.fps is not None else "  ..."
        return [f"{fps} fps  frame {index}", f"dropped {sum(self.dropped_by.values())}  rejected {rejected}",
                f"classes {max(len(self.book), self.loaded)}"]


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
    display, hud = Display(window, s.save if not stage.attempt else None), Hud()
    if s.save and stage.attempt:
        stage.log.warning("restarted: the annotated video %s is not continued", s.save)
    poller = zmq.Poller()
    poller.register(frames_in.sock, zmq.POLLIN)
    poller.register(events_in.sock, zmq.POLLIN)
    frames, frames_done, events_done = 0, False, False  # done: end of stream from the gate / the cluster
    try:
        while not (frames_done and events_done) and not display.closed:
            display.idle()
            ready = dict(poller.poll(200))
            ledger.summarise(stage.live)
            tally.status(ledger.duplicates, frames_in.rejected + events_in.rejected)
            stage.stats.total("rejected", frames_in.rejected + events_in.rejected)
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
            msg = frames_in.recv(0) if frames_in.sock in ready else None
            frames_done |= isinstance(msg, EndOfStream)
            if isinstance(msg, LabeledFrame) and not ledger.seen(msg.source, msg.index):
                now = time.time()
                log.write_many(records(msg, now))  # one write: a kill leaves a frame's records whole or absent
                ledger.commit(msg.source, msg.index)
                hud.on_frame(now)
                tally.on_frame(now)
                frames += 1
                stage.stats.inc("frames", source=msg.source)
                stage.stats.observe("latency", now - msg.ts, msg.source)
                if display.active:
                    display.show(msg, hud, frames_in.rejected + events_in.rejected)
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
