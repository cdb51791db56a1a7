"""Capture stage: reads the source and pushes Frames; file mode waits for downstream, live mode drops stale frames."""
from __future__ import annotations

import time

import zmq

from stages.process import StageProcess
from stream.messages import EndOfStream, Frame
from stream.sockets import send
from stream.sources import LiveSource, open_source


def run(stage: StageProcess) -> int:
    s = stage.settings.capture
    source = open_source(s.source)
    live = s.mode == "live" or (s.mode == "auto" and source.live)
    if live and not isinstance(source, LiveSource):
        raise ValueError("capture.mode: live needs a camera index or a URL")
    # Live: a queue of one, so what reaches the detector is never older than one frame.
    out = stage.socket(zmq.PUSH, "frames", bind=True, hwm=1 if live else None)
    stage.started(source=source.name, live=live, fps=float(source.fps))
    try:
        sent, reason = (_live if live else _file)(stage, source, out, s.max_frames)
    finally:
        source.close()
    send(out, EndOfStream(source.name, sent, reason))
    stage.emit("stage_stopped", frames=sent, corrupt=source.corrupt, reason=reason)
    return 0


def _file(stage: StageProcess, source, out: zmq.Socket, max_frames: int) -> tuple[int, str]:
    """Every frame, blocking while downstream is busy (backpressure); returns (frames sent, reason)."""
    sent = 0
    for index, image in source.frames():
        while not out.poll(200, zmq.POLLOUT):
            if stage.stop_requested:
                return sent, "stopped"
        if stage.stop_requested:
            return sent, "stopped"
        send(out, Frame(source.name, index, time.time(), image))
        sent += 1
        if max_frames and sent >= max_frames:
            break
    return sent, "end"


def _live(stage: StageProcess, source: LiveSource, out: zmq.Socket, max_frames: int) -> tuple[int, str]:
    """The freshest frame whenever downstream can take one; every frame skipped is counted and reported."""
    sent, dropped = 0, 0
    pending = None  # (index, capture time, image) not yet sent
    while not stage.stop_requested and not (max_frames and sent >= max_frames):
        latest, skipped = source.take(timeout=0.2)
        if latest is not None:
            if pending is not None:
                skipped.append(pending[0])  # a newer frame replaces the one still waiting
            pending = latest
        if skipped:
            dropped += len(skipped)
            stage.emit("frame_dropped", source=source.name, frames=sorted(skipped), count=len(skipped),
                       total=dropped)
        if pending is not None:
            try:
                send(out, Frame(source.name, *pending), zmq.NOBLOCK)
                sent, pending = sent + 1, None
            except zmq.Again:
                pass
        elif source.ended:
            return sent, "lost"
    return sent, "stopped"
