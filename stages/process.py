"""What every stage process shares: its sockets by endpoint name, its events, signals and parent death."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

import zmq

from stages.config import Settings
from stages.keys import socket_curve
from stream.batching import collect
from stream.events import event
from stream.security import Zap
from stream.sockets import open_socket, send

_PR_SET_PDEATHSIG = 1
_EVENTS_HWM = 1000  # events are small; a stage should not stall on the log


def die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM when the supervisor dies, so no stage is orphaned."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


def limit_threads(threads: int) -> None:
    """Stages share the machine's cores; a model stage uses `threads` of them (0 = library default)."""
    if threads:
        import cv2
        import torch
        cv2.setNumThreads(threads)
        torch.set_num_threads(threads)


class StageProcess:
    """Owns the ZeroMQ context and sockets of one stage, and its link to the sink's event log.

    SIGINT only sets `stop_requested`: capture ends the stream when it sees it, and every other
    stage keeps draining until the end-of-stream message reaches it. SIGTERM ends the process.
    """

    def __init__(self, name: str, settings: Settings):
        self.name, self.settings = name, settings
        self.log = logging.getLogger(f"owd.{name}")
        self.stop_requested = False
        signal.signal(signal.SIGINT, self._on_sigint)
        self.ctx = zmq.Context()
        self._sockets: list[zmq.Socket] = []
        self._ipc_files: list[str] = []
        self._zap: Zap | None = None  # started with the first CURVE server socket
        # Every stage pushes its events to the sink, which binds the other end and writes the log.
        if name == "sink":
            self.events_in = self.socket(zmq.PULL, "events", bind=True, hwm=_EVENTS_HWM)
        else:
            self.events = self.socket(zmq.PUSH, "events", bind=False, hwm=_EVENTS_HWM)

    def _on_sigint(self, signum, frame) -> None:
        self.stop_requested = True

    def socket(self, kind: int, endpoint: str, *, bind: bool, hwm: int | None = None) -> zmq.Socket:
        """The stage's socket on `endpoint`; a tcp one speaks CurveZMQ with this stage's keys."""
        transport = self.settings.transport
        address = transport.endpoints[endpoint]
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
        send(self.events, event(type_, stage=self.name, **fields))

    def relay_batches(self, inbox, out: zmq.Socket, max_items: int, timeout_ms: int, step) -> int:
        """The loop of a batching stage: collect up to max_items messages (or timeout_ms), send what
        step(batch) returns, forward the end of stream and return how many messages came in."""
        count = 0
        while True:
            batch, eos = collect(inbox, max_items, timeout_ms)
            for msg in step(batch):
                send(out, msg)
            count += len(batch)
            if eos is not None:
                send(out, eos)
                return count

    def started(self, **fields) -> None:
        self.emit("stage_started", pid=os.getpid(), **fields)
        self.log.info("started (pid %d)", os.getpid())

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        if self._zap is not None:
            self._zap.close()  # its socket must go before the context can end
        self.ctx.term()
        for path in self._ipc_files:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
