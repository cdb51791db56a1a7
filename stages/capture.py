"""Capture stage: pushes Frames; file mode replays what the sink has not logged, live mode drops stale frames."""
from __future__ import annotations

import sys
import time
from collections import deque

import zmq

from stages.process import Committed, StageProcess
from stream.messages import EndOfStream, Event, Frame
from stream.sockets import Inbox, send
from stream.sources import LiveSource, open_source


class Ledger:
    """Frames sent but not yet committed by the sink, fed by the sink's acks. File mode keeps the
    frames themselves to replay them after a restart; live mode only their send times."""

    def __init__(self, stage: StageProcess, source: str):
        self.stage, self.source = stage, source
        self.acks = Inbox(stage.socket("acks", hwm=1000), "capture/acks", (Event,))
        self.pending: dict[int, Frame | float] = {}
        self.committed = Committed()
        self.heard = self.progress = time.monotonic()  # last ack / last frame committed or restart

    def poll(self, timeout_ms: int = 0) -> None:
        """Takes every ack waiting (waits up to timeout_ms for the first)."""
        while (msg := self.acks.recv(timeout_ms)) is not None or self.acks.sock.poll(0):
            timeout_ms = 0
            rec = msg.record if msg is not None else {}
            if rec.get("type") != "committed" or rec.get("source") != self.source:
                continue
            self.committed.merge(int(rec.get("below", 0)), rec.get("frames", ()), int(rec.get("high", 0)))
            self.heard = time.monotonic()
            for index in [i for i in self.pending if i in self.committed]:
                del self.pending[index]
                self.progress = self.heard

    def lost(self, indices: list[int], reason: str) -> None:
        """Frames that will never be logged: an event, a warning on stderr."""
        for i in indices:
            self.pending.pop(i, None)
        if indices:
            self.stage.emit("frames_lost", source=self.source, frames=indices, count=len(indices), reason=reason)
            print(f"owd capture: {len(indices)} frame(s) lost ({reason}): {indices[:20]}"
                  f"{' …' if len(indices) > 20 else ''}", file=sys.stderr)


def run(stage: StageProcess) -> int:
    s = stage.settings.capture
    source = open_source(s.source)
    live = s.mode == "live" or (s.mode == "auto" and source.live)
    if live and not isinstance(source, LiveSource):
        raise ValueError("capture.mode: live needs a camera index or a URL")
    # Live: a queue of one, so what reaches the detector is never older than one frame.
    out = stage.socket("frames", hwm=1 if live else None)
    ledger = Ledger(stage, source.name) if stage.supervised else None
    stage.started(source=source.name, live=live, fps=float(source.fps))
    try:
        sent, reason = (_live if live else _file)(stage, source, out, s.max_frames, ledger)
    finally:
        source.close()
    lost = 0
    if ledger is not None:
        lost = _drain(stage, ledger, out, live)
    else:
        send(out, EndOfStream(source.name, sent, reason))
    stage.emit("stage_stopped", frames=sent, corrupt=source.corrupt, reason=reason, lost=lost)
    return 0


def _drain(stage: StageProcess, ledger: Ledger, out: zmq.Socket, live: bool) -> int:
    """Supervised end of stream: wait until the sink logged every frame sent (replaying after restarts),
    giving up after shutdown_timeout_s without progress; returns how many frames were lost."""
    timeout = stage.settings.transport.shutdown_timeout_s
    ledger.progress = time.monotonic()
    resend: deque[int] = deque()
    while ledger.pending and time.monotonic() - ledger.progress < timeout:
        ledger.poll(100)
        if stage.take_replay():
            ledger.progress = time.monotonic()
            resend = deque(sorted(i for i, f in ledger.pending.items() if isinstance(f, Frame)))
        while resend and out.poll(0, zmq.POLLOUT):
            i = resend.popleft()
            if i in ledger.pending:
                send(out, ledger.pending[i])
    lost = sorted(ledger.pending)
    ledger.lost(lost, "drain timed out" if not live else "in flight at the end")
    return len(lost)


def _file(stage: StageProcess, source, out: zmq.Socket, max_frames: int, ledger: Ledger | None) -> tuple[int, str]:
    """Every frame, blocking while downstream is busy (backpressure); returns (frames read, reason).
    Supervised: at most transport.replay_window frames uncommitted; after a restart downstream
    (SIGUSR1) they are sent again; a restarted capture skips what the sink already logged."""
    window = stage.settings.transport.replay_window
    if ledger is not None and stage.attempt:
        ledger.poll(3000)  # the sink's summary of what it logged (it sends one every second)
    resend: deque[int] = deque()
    read, frames = 0, source.frames()
    nxt, fresh = None, False  # the frame to send next; fresh: read from the source, never sent
    while True:
        if ledger is not None:
            ledger.poll(0)
            if stage.take_replay():
                resend = deque(sorted(ledger.pending))
                stage.log.info("replaying %d uncommitted frame(s)", len(resend))
        while nxt is None and resend:
            nxt, fresh = ledger.pending.get(resend.popleft()), False
        if stage.stop_requested and (nxt is None or fresh):
            if nxt is not None:  # read but never sent: not part of the stream
                read -= 1
                if ledger is not None:
                    del ledger.pending[nxt.index]
            return read, "stopped"
        if nxt is None:
            if max_frames and read >= max_frames:
                return read, "end"
            if ledger is not None and len(ledger.pending) >= window:
                ledger.poll(100)  # wait for the sink to catch up
                continue
            item = next(frames, None)
            if item is None:
                return read, "end"
            read += 1
            if ledger is not None and item[0] in ledger.committed:
                continue  # logged before this capture restarted
            nxt, fresh = Frame(source.name, item[0], time.time(), item[1]), True
            if ledger is not None:
                ledger.pending[nxt.index] = nxt
        if out.poll(200, zmq.POLLOUT):
            send(out, nxt)
            nxt = None


def _live(stage: StageProcess, source: LiveSource, out: zmq.Socket, max_frames: int,
          ledger: Ledger | None) -> tuple[int, str]:
    """The freshest frame whenever downstream can take one; every frame skipped is counted and reported.
    Supervised: after a restart downstream, frames then in flight and still not logged a minute
    later (time for the new process to load its model) are reported lost."""
    sent, dropped = 0, 0
    pending = None  # (index, capture time, image) not yet sent
    expiry = stage.settings.transport.stall_timeout_s + 60.0
    window = stage.settings.transport.live_window
    suspects: dict[int, float] = {}  # frame -> when it counts as lost
    offset = 0
    if ledger is not None and stage.attempt:  # a restarted capture numbers on after what was logged
        ledger.poll(3000)
        offset = ledger.committed.high
    while not stage.stop_requested and not (max_frames and sent >= max_frames):
        latest, skipped = source.take(timeout=0.2)
        skipped = [i + offset for i in skipped]
        if latest is not None:
            latest = (latest[0] + offset, *latest[1:])
            if pending is not None:
                skipped.append(pending[0])  # a newer frame replaces the one still waiting
            pending = latest
        if skipped:
            dropped += len(skipped)
            stage.emit("frame_dropped", source=source.name, frames=sorted(skipped), count=len(skipped),
                       total=dropped)
        # Supervised: a frame goes only when fewer than live_window are ahead of it (logged frames come
        # back in order, so any older frame not logged is lost, not ahead); the socket queues alone
        # hold several frames per hop, and every frame queued is latency.
        ahead = sum(1 for i in ledger.pending if i >= ledger.committed.high) if ledger is not None else 0
        if pending is not None and ahead < window:
            try:
                send(out, Frame(source.name, *pending), zmq.NOBLOCK)
                if ledger is not None:
                    ledger.pending[pending[0]] = time.monotonic()
                sent, pending = sent + 1, None
            except zmq.Again:
                pass
        elif pending is None and source.ended:
            return sent, "lost"
        if ledger is not None:
            ledger.poll(0)
            now = time.monotonic()
            if stage.take_replay():  # live: no replay; what was inside the restarted stage is gone
                suspects.update({i: now + expiry for i in ledger.pending if i not in suspects})
            suspects = {i: t for i, t in suspects.items() if i in ledger.pending}
            ledger.lost(sorted(i for i, t in suspects.items() if now > t), "lost in a restart")
    return sent, "stopped"
