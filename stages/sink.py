"""Sink stage: writes the JSONL event log, shows the annotated window and saves the annotated video."""
from __future__ import annotations

import os
import time
from collections import deque

import cv2
import zmq

from stages.process import StageProcess
from stream.events import EventLog
from stream.messages import EndOfStream, Event, LabeledFrame
from stream.overlay import draw
from stream.sockets import Inbox


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
                    "track": int(msg.track[i])})
    return out


class Display:
    """The window and the video file; either may be off. `closed` turns true when the user quits."""

    def __init__(self, window: str | None, save: str | None):
        self.window, self.save = window, save
        self.writer = None
        self.closed = self.shown = False
        if window:
            cv2.namedWindow(window, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)

    @property
    def active(self) -> bool:
        return bool(self.window or self.save)

    def show(self, image, fps: float) -> None:
        if self.save:
            if self.writer is None:
                fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.save.endswith(".mp4") else "MJPG"))
                self.writer = cv2.VideoWriter(self.save, fourcc, fps or 25.0, (image.shape[1], image.shape[0]))
                if not self.writer.isOpened():
                    raise OSError(f"cannot write video {self.save}")
            self.writer.write(image)
        if self.window:
            if not self.shown:
                cv2.resizeWindow(self.window, image.shape[1], image.shape[0])
                self.shown = True
            cv2.imshow(self.window, image)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.closed = True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        if self.window:
            cv2.destroyAllWindows()


class Hud:
    """What the overlay's corner says: processing rate, drops, rejected messages, classes found."""

    def __init__(self):
        self.recent: deque[float] = deque()  # arrival times of the last 2 s of frames
        self.dropped = self.classes = 0
        self.source_fps = 0.0

    def on_event(self, rec: dict) -> None:
        if rec["type"] == "frame_dropped":
            self.dropped = rec.get("total", self.dropped)
        elif rec["type"] == "class_discovered":
            self.classes += 1
        elif rec["type"] == "stage_started" and rec.get("stage") == "capture":
            fps = rec.get("fps")  # from the wire: any JSON value
            self.source_fps = float(fps) if isinstance(fps, (int, float)) and 0 < fps <= 1000 else 0.0

    def on_frame(self, now: float) -> None:
        self.recent.append(now)  # frames arrive in batches: a rate over a window, not per interval
        while now - self.recent[0] > 2.0:
            self.recent.popleft()

    def lines(self, index: int, rejected: int) -> list[str]:
        span = self.recent[-1] - self.recent[0] if len(self.recent) > 1 else 0.0
        fps = (len(self.recent) - 1) / span if span > 0 else 0.0
        return [f"{fps:5.1f} fps  frame {index}", f"dropped {self.dropped}  rejected {rejected}",
                f"classes found {self.classes}"]


def run(stage: StageProcess) -> int:
    s = stage.settings.sink
    frames_in = Inbox(stage.socket(zmq.PULL, "labeled", bind=True), "sink", (LabeledFrame, EndOfStream))
    events_in = Inbox(stage.events_in, "sink/events", (Event, EndOfStream))
    window = s.window if not s.headless and os.environ.get("DISPLAY") else None
    if not s.headless and window is None:
        stage.log.warning("no DISPLAY: running without a window (use --headless to silence this)")
    log = EventLog(s.events)
    log.write({"type": "stage_started", "ts": time.time(), "stage": "sink", "pid": os.getpid()})
    display, hud = Display(window, s.save), Hud()
    poller = zmq.Poller()
    poller.register(frames_in.sock, zmq.POLLIN)
    poller.register(events_in.sock, zmq.POLLIN)
    frames, frames_done, events_done = 0, False, False  # done: end of stream from the gate / the cluster
    try:
        while not (frames_done and events_done) and not display.closed:
            ready = dict(poller.poll(200))
            msg = events_in.recv(0) if events_in.sock in ready else None
            events_done |= isinstance(msg, EndOfStream)
            if isinstance(msg, Event):
                log.write(msg.record)
                hud.on_event(msg.record)
            msg = frames_in.recv(0) if frames_in.sock in ready else None
            frames_done |= isinstance(msg, EndOfStream)
            if isinstance(msg, LabeledFrame):
                now = time.time()
                for rec in records(msg, now):
                    log.write(rec)
                hud.on_frame(now)
                frames += 1
                if display.active:
                    display.show(draw(msg, hud.lines(msg.index, frames_in.rejected + events_in.rejected)),
                                 hud.source_fps)
        while (msg := events_in.recv(100)) is not None:  # late stage_stopped records
            if isinstance(msg, Event):
                log.write(msg.record)
        log.write({"type": "stage_stopped", "ts": time.time(), "stage": "sink", "frames": frames,
                   "rejected": frames_in.rejected + events_in.rejected,
                   "reason": "window closed" if display.closed else "end"})
    finally:
        display.close()
        log.close()
    return 0
