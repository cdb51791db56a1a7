"""Capture stage: pushes Frames; file mode replays what the sink has not logged, live mode drops stale frames."""
from __future__ import annotations

import sys
import time
from collections import deque

import zmq

from stages.process import Committed, StageProcess
from stream.messages import EndOfStream, Event, Frame
from stream.sockets import Inbox, send
from stream.sources import LiveSource, SourceError, VideoFile, open_source


class Ledger:
    """Frames of one source sent but not yet committed by the sink, fed by the sink's acks (one acks
    socket for every source: any ledger's poll hands each ack to its source's ledger). File mode
    keeps the frames themselves to replay them after a restart; live mode only their send times."""

    def __init__(self, stage: StageProcess, source: str, peers: dict[str, "Ledger"]):
        self.stage, self.source, self.peers = stage, source, peers
        self.acks = next(iter(peers.values())).acks if peers else \
            Inbox(stage.socket("acks", hwm=1000), "capture/acks", (Event,))
        peers[source] = self
        self.pending: dict[int, Frame | float] = {}
        self.sent_at: dict[int, float] = {}  # file mode: when each pending frame last went out
        self.committed = Committed()
        self.heard = self.progress = time.monotonic()  # last ack / last frame committed or restart

    def poll(self, timeout_ms: int = 0) -> None:
        """Takes every ack waiting (waits up to timeout_ms for the first)."""
        while (msg := self.acks.recv(timeout_ms)) is not None or self.acks.sock.poll(0):
            timeout_ms = 0
            rec = msg.record if msg is not None else {}
            ledger = self.peers.get(rec.get("source")) if rec.get("type") == "committed" else None
            if ledger is not None:
                ledger.apply(rec)

    def apply(self, rec: dict) -> None:
        self.committed.merge(int(rec.get("below", 0)), rec.get("frames", ()), int(rec.get("high", 0)))
        self.heard = time.monotonic()
        for index in [i for i in self.pending if i in self.committed]:
            del self.pending[index]
            self.sent_at.pop(index, None)
            self.progress = self.heard
        self.stage.stats.set("in_flight_frames", len(self.pending), self.source)

    def holes(self, after_s: float) -> list[int]:
        """Pending frames that later ones overtook in the log long ago: lost with a worker that was
        not restarted here (one joined from another host), or given up on by the gate."""
        now = time.monotonic()
        return [i for i in sorted(self.pending) if i < self.committed.high and now - self.sent_at.get(i, now) > after_s]

    def lost(self, indices: list[int], reason: str) -> None:
        """Frames that will never be logged: an event, a warning on stderr."""
        for i in indices:
            self.pending.pop(i, None)
        if indices:
            self.stage.emit("frames_lost", source=self.source, frames=indices, count=len(indices), reason=reason)
            print(f"owd capture: {len(indices)} frame(s) lost ({reason}) of {self.source}: {indices[:20]}"
                  f"{' …' if len(indices) > 20 else ''}", file=sys.stderr)


def run(stage: StageProcess) -> int:
    s = stage.settings.capture
    sources, failed = _open(s.source)
    live = s.mode == "live" or (s.mode == "auto" and sources[0].live)
    if live and (len(sources) > 1 or not isinstance(sources[0], LiveSource)):
        raise ValueError("capture.mode: live needs one camera index or URL (several sources: files and folders)")
    # Live: a queue of one, so what reaches the detector is never older than one frame.
    out = stage.socket("frames", hwm=1 if live else None)
    ledgers: dict[str, Ledger] = {}
    if stage.supervised:
        for source in sources:
            Ledger(stage, source.name, ledgers)
    stage.started(source=sources[0].name, sources=[x.name for x in sources], live=live, fps=float(sources[0].fps),
                  source_fps=[float(x.fps) for x in sources])
    for spec, error in failed if not stage.attempt else ():  # a restarted capture said it before
        _failed(stage, spec, error, 0)
    try:
        if live:
            sent, reason = _live(stage, sources[0], out, s.max_frames, ledgers.get(sources[0].name))
            sent = {sources[0].name: sent}
        else:
            sent, reason = _files(stage, sources, out, s.max_frames, ledgers)
    finally:
        for source in sources:
            source.close()
    lost = 0
    if ledgers:
        lost = _drain(stage, ledgers, out, live)
        # every frame is now logged or declared lost: copies still queued for a blocked pipeline must not
        # keep the context (and this process) from ending
        out.setsockopt(zmq.LINGER, 0)
    else:
        for source in sources:
            send(out, EndOfStream(source.name, sent[source.name], reason))
    stage.emit("stage_stopped", frames=sum(sent.values()), corrupt=sum(x.corrupt for x in sources), reason=reason,
               lost=lost)
    return 0


def _open(specs: list[str]) -> tuple[list, list[tuple[str, str]]]:
    """The sources that open, and (spec, error) of those that do not; when none opens, the first
    error is raised (one line, exit 2), as for a run of one source."""
    sources, failed = [], []
    for spec in specs:
        try:
            sources.append(open_source(spec))
        except SourceError as exc:
            failed.append((spec, str(exc)))
    if not sources:
        raise SourceError(failed[0][1] if len(failed) == 1 else
                          f"no source could be opened: {'; '.join(error for _, error in failed)}")
    return sources, failed


def _failed(stage: StageProcess, source: str, error: str, frames: int) -> None:
    """A source that cannot be opened or stops mid-way: a source_failed record and a line on stderr;
    the other sources go on."""
    stage.emit("source_failed", source=source, error=error, frames=frames)
    print(f"owd capture: source {source} failed after {frames} frame(s): {error}", file=sys.stderr)


def _drain(stage: StageProcess, ledgers: dict[str, Ledger], out: zmq.Socket, live: bool) -> int:
    """Supervised end of stream: wait until the sink logged every frame sent (replaying after restarts),
    giving up after shutdown_timeout_s without progress (plus gate.reorder_s: while the gate holds a
    source's frames for one still in a slow worker, nothing is logged); returns how many frames were lost."""
    timeout = stage.settings.transport.shutdown_timeout_s + (0 if live else stage.settings.gate.reorder_s)
    any_ledger = next(iter(ledgers.values()))
    for ledger in ledgers.values():
        ledger.progress = time.monotonic()
    resend: deque[tuple[str, int]] = deque()  # (source, index)

    def progress() -> float:
        return max(ledger.progress for ledger in ledgers.values())
    while any(ledger.pending for ledger in ledgers.values()) and time.monotonic() - progress() < timeout:
        any_ledger.poll(100)
        replay = stage.take_replay()
        for ledger in ledgers.values():
            if replay:
                ledger.progress = time.monotonic()
            todo = sorted(ledger.pending) if replay else [] if live else ledger.holes(_HOLE_S)
            queued = set(resend)
            resend.extend((ledger.source, i) for i in todo if isinstance(ledger.pending[i], Frame)
                          and (ledger.source, i) not in queued)
        while resend and out.poll(0, zmq.POLLOUT):
            source, index = resend.popleft()
            ledger = ledgers[source]
            if index in ledger.pending:
                send(out, ledger.pending[index])
                ledger.sent_at[index] = time.monotonic()
    lost = 0
    for ledger in ledgers.values():
        gone = sorted(ledger.pending)
        ledger.lost(gone, "drain timed out" if not live else "in flight at the end")
        lost += len(gone)
    return lost


_HOLE_S = 5.0  # a frame later ones overtook in the log this long ago is sent again


class _Feed:
    """One file source in file mode: its frames in order, its replays, what it read."""

    def __init__(self, source, ledger: Ledger | None):
        self.source, self.ledger = source, ledger
        self.frames, self.read = source.frames(), 0
        self.resend: deque[int] = deque()
        self.nxt, self.fresh = None, False  # the frame to send next; fresh: read from the source, never sent
        self.reason = ""                    # set when this source is done: end, stopped or failed
        self.last = -1                      # the index of the last frame read

    def next_frame(self, stage: StageProcess, max_frames: int, window: int) -> Frame | None:
        """The frame to send now, or None (waiting for the sink, or done: see reason)."""
        ledger = self.ledger
        while self.nxt is None and self.resend:
            self.nxt, self.fresh = ledger.pending.get(self.resend.popleft()), False
        if stage.stop_requested:
            if self.nxt is not None and self.fresh:  # read but never sent: not part of the stream
                self.read -= 1
                if ledger is not None:
                    del ledger.pending[self.nxt.index]
            # a frame due again stays pending: the drain sends it (waiting here for a blocked pipeline
            # to take it kept a stopped capture from ever draining)
            self.nxt = None
            self.resend.clear()
            self.reason = "stopped"
            return None
        while self.nxt is None:
            if max_frames and self.read >= max_frames:
                self.reason = "end"
                return None
            if ledger is not None and len(ledger.pending) >= window:
                return None  # wait for the sink to catch up
            try:
                item = next(self.frames, None)
            except Exception as exc:  # a decoder or file error mid-way: this source ends, the others go on
                self.reason = "failed"
                _failed(stage, self.source.name, f"{type(exc).__name__}: {exc}", self.read)
                return None
            if item is None:
                self.reason = "end"
                declared = self.source.frame_count if isinstance(self.source, VideoFile) else 0
                # slack: some containers estimate the count from duration x rate (1 %, at least one frame)
                if not stage.attempt and self.last + 1 < declared - max(1, declared // 100):
                    self.reason = "failed"
                    _failed(stage, self.source.name, f"the video ended after {self.last + 1} of the {declared} "
                            f"frames its header declares (truncated or damaged?)", self.read)
                return None
            self.last = item[0]
            self.read += 1
            if ledger is not None and item[0] in ledger.committed:
                continue  # logged before this capture restarted
            self.nxt, self.fresh = Frame(self.source.name, item[0], time.time(), item[1]), True
            if ledger is not None:
                ledger.pending[self.nxt.index] = self.nxt
        return self.nxt

    def sent(self, stage: StageProcess) -> None:
        if self.fresh:
            stage.stats.inc("frames", source=self.source.name)
        if self.ledger is not None:
            self.ledger.sent_at[self.nxt.index] = time.monotonic()
            stage.stats.set("in_flight_frames", len(self.ledger.pending), self.source.name)
        self.nxt = None


def _files(stage: StageProcess, sources: list, out: zmq.Socket, max_frames: int,
           ledgers: dict[str, Ledger]) -> tuple[dict[str, int], str]:
    """Every frame of every source, the sources in turn, blocking while downstream is busy
    (backpressure); returns (frames read per source, reason). Supervised: at most
    transport.replay_window frames of a source uncommitted; after a restart downstream (SIGUSR1)
    they are sent again; a restarted capture skips what the sink already logged."""
    window = stage.settings.transport.replay_window
    feeds = [_Feed(source, ledgers.get(source.name)) for source in sources]
    any_ledger = next(iter(ledgers.values()), None)
    if any_ledger is not None and stage.attempt:
        any_ledger.poll(3000)  # the sink's summary of what it logged (it sends one every second)
    turn = 0
    while True:
        if any_ledger is not None:
            any_ledger.poll(0)
            replay = stage.take_replay()
            for feed in feeds:
                if feed.ledger is None:
                    continue
                if replay:
                    feed.resend = deque(sorted(feed.ledger.pending))
                    stage.log.info("replaying %d uncommitted frame(s) of %s", len(feed.resend), feed.source.name)
                elif not feed.resend:
                    feed.resend = deque(feed.ledger.holes(_HOLE_S))
        active = [f for f in feeds if not f.reason]
        if not active:
            break
        ready = [(f, frame) for f in active[turn % len(active):] + active[:turn % len(active)]
                 if (frame := f.next_frame(stage, max_frames, window)) is not None]
        if not ready:
            if any_ledger is not None and any(not f.reason for f in feeds):
                any_ledger.poll(100)  # every source waits for the sink
            continue
        feed, frame = ready[0]
        if out.poll(200, zmq.POLLOUT):
            send(out, frame)
            feed.sent(stage)
            turn += 1
    reasons = {f.reason for f in feeds}
    return {f.source.name: f.read for f in feeds}, "stopped" if "stopped" in reasons else "end"


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
            stage.stats.total("dropped_frames", dropped, source.name)
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
                stage.stats.inc("frames", source=source.name)
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
