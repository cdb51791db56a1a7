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


def run(stage: StageProcess) -> int:
    s = stage.settings.sink
    frames_in = Inbox(stage.socket(zmq.PULL, "labeled", bind=True), "sink", (LabeledFrame, EndOfStream))
    events_in = Inbox(stage.events_in, "sink/events", (Event, EndOfStream))
    window = s.window if not s.headless and os.environ.get("DISPLAY") else None
    if not s.headless and window is None:
        stage.log.warning("no DISPLAY: running without a window (use --headless to silence this)")
    log = EventLog(s.events)
    log.write({"type": "stage_started", "ts": time.time(), "stage": "sink", "pid": os.getpid()})
    display = Display(window, s.save)
    poller = zmq.Poller()
    poller.register(frames_in.sock, zmq.POLLIN)
    poller.register(events_in.sock, zmq.POLLIN)
    frames, dropped, classes, source_fps, fps = 0, 0, 0, 0.0, 0.0
    recent: deque[float] = deque()  # arrival times of the last 2 s of frames
    frames_done = events_done = False
    try:
        while not (frames_done and events_done) and not display.closed:
            ready = dict(poller.poll(200))
            if events_in.sock in ready:
                msg = events_in.recv(0)
                if isinstance(msg, EndOfStream):
                    events_done = True
                elif msg is not None:
                    rec = msg.record
                    log.write(rec)
                    dropped = rec.get("total", dropped) if rec["type"] == "frame_dropped" else dropped
                    classes += rec["type"] == "class_discovered"
                    if rec["type"] == "stage_started" and rec.get("stage") == "capture":
                        source_fps = float(rec.get("fps") or 0.0)
            if frames_in.sock in ready:
                msg = frames_in.recv(0)
                if isinstance(msg, EndOfStream):
                    frames_done = True
                elif msg is not None:
                    now = time.time()
                    for rec in records(msg, now):
                        log.write(rec)
                    recent.append(now)  # frames arrive in batches: rate over a window, not per interval
                    while now - recent[0] > 2.0:
                        recent.popleft()
                    fps = (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6) if len(recent) > 1 else 0.0
                    frames += 1
                    if display.active:
                        hud = [f"{fps:5.1f} fps  frame {msg.index}", f"dropped {dropped}  rejected "
                               f"{frames_in.rejected + events_in.rejected}", f"classes found {classes}"]
                        display.show(draw(msg, hud), source_fps)
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
