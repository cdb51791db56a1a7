"""What every stage process shares: its sockets by endpoint name, its events, how it ends, what the sink committed."""
from __future__ import annotations

import logging
import os
import signal
import socket as _host
import threading
import time

import zmq

from stages.config import Settings
from stages.keys import socket_curve
from stages.lifecycle import ATTEMPT_ENV, SUPERVISED_ENV, WORKER_ENV, flags as _flags
from stream.batching import collect
from stream.events import event
from stream.messages import EndOfStream, Event
from stream.security import Zap
from stream.sockets import Inbox, open_socket, send
from stream.sources import is_live
from stream.stats import Stats
from stream.topology import WORKERS, role

_EVENTS_HWM = 1000  # events are small; a stage should not stall on the log


def limit_threads(threads: int) -> None:
    """Stages share the machine's cores; a model stage uses `threads` of them (0 = library default)."""
    if threads:
        import cv2
        import torch
        cv2.setNumThreads(threads)
        torch.set_num_threads(threads)


class SupervisedInbox(Inbox):
    """An inbox of a supervised stage: an end-of-stream message, which anyone could send, is
    rejected; the supervisor decides when the stream ends."""

    def recv(self, timeout_ms: int | None = None):
        msg = super().recv(timeout_ms)
        if isinstance(msg, EndOfStream):
            self.rejected += 1
            logging.getLogger(f"owd.{self.name}").warning(
                "ignored an end-of-stream message: the supervisor ends this run")
            return None
        return msg


class Committed:
    """The frames of one source the sink has logged: every index below `below`, plus `above`;
    `high` is one past the highest."""

    def __init__(self):
        self.below, self.high, self.above = 0, 0, set()

    def add(self, index: int) -> None:
        self.high = max(self.high, index + 1)
        if index >= self.below:
            self.above.add(index)
            while self.below in self.above:
                self.above.remove(self.below)
                self.below += 1

    def __contains__(self, index: int) -> bool:
        return index < self.below or index in self.above

    def merge(self, below: int, frames=(), high: int = 0) -> None:
        """What an ack says; also how a live sink forgets old gaps (dropped frames are never replayed)."""
        self.high = max(self.high, below, high)
        if below > self.below:
            self.below = below
            self.above = {i for i in self.above if i >= below}
            while self.below in self.above:
                self.above.remove(self.below)
                self.below += 1
        for i in frames:
            self.add(int(i))


class StageProcess:
    """Owns the ZeroMQ context and sockets of one stage, and its link to the sink's event log.

    Unsupervised (a stage run alone, `--only`): SIGINT only sets `stop_requested`; capture ends the
    stream when it sees it, and every other stage keeps draining until the end-of-stream message
    reaches it. Supervised: end-of-stream messages are ignored; the supervisor sends SIGINT to each
    stage in pipeline order once its upstream has exited, and the stage exits when its input is
    drained (`drained`). SIGTERM ends the process either way, removing its ipc files.
    """

    def __init__(self, name: str, settings: Settings):
        self.name, self.settings = name, settings
        self.log = logging.getLogger(f"owd.{name}")
        self.supervised = os.environ.get(SUPERVISED_ENV) == "1"
        self.attempt = int(os.environ.get(ATTEMPT_ENV, "0"))  # 0: first start, n: n-th restart
        self.worker = int(os.environ.get(WORKER_ENV, "0"))    # which of a pool of local workers
        self.ctx = zmq.Context()
        self._sockets: list[zmq.Socket] = []
        self._ipc_files: list[str] = []
        self._zap: Zap | None = None  # started with the first CURVE server socket
        # Every stage pushes its events to the sink, which binds the other end and writes the log.
        if name == "sink":
            self.events_in = self.socket("events", hwm=_EVENTS_HWM)
        else:
            self.events = self.socket("events", hwm=_EVENTS_HWM)
        self.stats = Stats()
        self._stats_stop = threading.Event()
        self._stats_thread = None
        if self.settings.transport.endpoints.get("stats"):  # the supervisor serves them as /metrics
            self._stats_thread = threading.Thread(target=self._send_stats, daemon=True, name="stats")
            self._stats_thread.start()

    @property
    def stop_requested(self) -> bool:
        return _flags["stop"]

    @property
    def drained(self) -> bool:
        """Supervised (or a worker, which has no end of stream of its own to wait for when others
        share its input) and told to stop: an idle input means this stage is done."""
        return (self.supervised or self.name in WORKERS) and _flags["stop"]

    def take_replay(self) -> bool:
        """True once after each SIGUSR1 (a downstream stage was restarted)."""
        asked, _flags["replay"] = _flags["replay"], False
        return asked

    @property
    def live(self) -> bool:
        c = self.settings.capture
        return c.mode == "live" or (c.mode == "auto" and any(is_live(x) for x in c.source))

    def inbox(self, sock: zmq.Socket, name: str, accepts: tuple[type, ...]) -> Inbox:
        return (SupervisedInbox if self.supervised else Inbox)(sock, name, accepts)

    def forward_end(self, sock: zmq.Socket, eos) -> None:
        """Pass the end of stream on (unsupervised runs only; supervised stages are ended by the supervisor)."""
        if not self.supervised and eos is not None:
            send(sock, eos)

    def socket(self, endpoint: str, *, hwm: int | None = None) -> zmq.Socket:
        """The stage's end of `endpoint` (kind and side from stream/topology.py); a tcp one speaks
        CurveZMQ with this stage's keys."""
        transport = self.settings.transport
        address = transport.endpoints[endpoint]
        kind, bind = role(self.name, endpoint)
        curve = socket_curve(self.settings, self.name, endpoint, bind)
        if curve is None and address.startswith("tcp://"):
            self.log.warning("%s on plain tcp (transport.insecure_tcp): whoever reaches %s can read and inject",
                             endpoint, address)
        if curve is not None and curve.is_server and self._zap is None:
            self._zap = Zap(self.ctx)
        sock = open_socket(self.ctx, kind, address, bind=bind, hwm=transport.hwm if hwm is None else hwm,
                           curve=curve, zap=self._zap)
        self._sockets.append(sock)
        if bind and address.startswith("ipc://"):
            self._ipc_files.append(address[len("ipc://"):])  # libzmq leaves them behind
        return sock

    def emit(self, type_: str, **fields) -> None:
        if self.worker and type_.startswith("stage_"):
            fields["worker"] = self.worker
        send(self.events, event(type_, stage=self.name, **fields))

    def _send_stats(self) -> None:
        """A snapshot of self.stats to the supervisor every second, and a last one at close (the
        thread owns its socket: zmq sockets are not shared between threads)."""
        address = self.settings.transport.endpoints["stats"]
        kind, bind = role(self.name, "stats")
        sock = open_socket(self.ctx, kind, address, bind=bind, hwm=10, linger_ms=1000,
                           curve=socket_curve(self.settings, self.name, "stats", bind))
        who = {"type": "stats", "stage": self.name, "worker": self.worker, "pid": os.getpid(),
               "host": _host.gethostname()}
        last = False
        while not last:
            last = self._stats_stop.wait(1.0)
            try:
                send(sock, Event({**who, "ts": time.time(), "final": last, **self.stats.snapshot()}), zmq.NOBLOCK)
            except zmq.Again:
                pass  # no supervisor listening (a stage run alone)
        sock.close(0 if _flags["terminated"] else 1000)

    def relay_batches(self, inbox, out: zmq.Socket, max_items: int, timeout_ms: int, step) -> int:
        """The loop of a batching stage: collect up to max_items messages (or timeout_ms), send what
        step(batch) returns, forward the end of stream and return how many messages came in."""
        count = 0
        while True:
            batch, eos = collect(inbox, max_items, timeout_ms)
            started = time.perf_counter()
            results = step(batch)
            if batch:
                self.stats.observe("inference", time.perf_counter() - started)
            for msg in results:
                send(out, msg)
                self.stats.inc("frames", source=msg.source)
            count += len(batch)
            self.stats.total("rejected", inbox.rejected)
            if eos is not None:
                send(out, eos)
                return count
            if not batch and self.drained:
                return count

    def started(self, **fields) -> None:
        self.emit("stage_started", pid=os.getpid(), **fields)
        self.log.info("started (pid %d)", os.getpid())

    def close(self) -> None:
        """ipc files first (so even a close that hangs on a dead peer leaves none), then the sockets:
        after SIGTERM without waiting for peers. The run's folder goes with the last stage's files."""
        folders = {os.path.dirname(p) for p in self._ipc_files}
        # a SIGTERM now (its handler raises SystemExit) would leave the rest of our files behind: it is
        # only noted until the files, and the run's folder if we are the last out, are gone
        late, main = [], threading.current_thread() is threading.main_thread()  # (tests run stages in threads)
        handler = signal.signal(signal.SIGTERM, lambda signum, frame: late.append(signum)) if main else None
        try:
            for path in self._ipc_files:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            _remove_run_folders(folders)
        finally:
            if main:
                signal.signal(signal.SIGTERM, handler)
        if late and callable(handler):
            handler(late[0], None)  # as if it came now: flags set, SystemExit
        if self._stats_thread is not None:
            self._stats_stop.set()
            self._stats_thread.join(3.0)
        for sock in self._sockets:
            sock.close(0 if _flags["terminated"] else None)
        if self._zap is not None:
            self._zap.close()  # its socket must go before the context can end
        self.ctx.term()
        _remove_run_folders(folders)


def _remove_run_folders(folders: set[str]) -> None:
    for folder in folders:
        if os.path.basename(folder).startswith("owd-"):
            try:
                os.rmdir(folder)  # only once empty: the last stage out removes it
            except OSError:
                pass
