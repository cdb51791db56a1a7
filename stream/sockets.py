"""ZeroMQ plumbing for stages: sockets with explicit high-water marks and linger, checked send and receive."""
from __future__ import annotations

import logging
import os

import zmq

from stream.security import Curve, Zap
from stream.wire import WireError, decode, encode

log = logging.getLogger(__name__)


def open_socket(ctx: zmq.Context, kind: int, endpoint: str, *, bind: bool, hwm: int = 16,
                linger_ms: int = -1, curve: Curve | None = None, zap: Zap | None = None) -> zmq.Socket:
    """A socket bound or connected to `endpoint` (ipc://path or tcp://host:port).

    hwm bounds the queue on each side: a full PUSH blocks, which is the backpressure of file mode.
    linger -1 (the default) delivers everything queued, the end-of-stream above all, before the
    context closes: a finite linger silently dropped the last frames of a slow run. When the peer
    is gone for good, the supervisor's shutdown timeout ends the wait.

    With `curve` the socket speaks CurveZMQ (encrypted, both ends authenticated); a CURVE server
    needs the context's `zap` handler, which admits only its allow-listed client keys. A bound
    ipc socket file is owner-only (0600): connecting to it takes write permission on it.
    """
    if curve is not None and curve.is_server and zap is None:
        raise ValueError("a CURVE server socket needs a ZAP handler: without one any client key gets in")
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    if curve is not None:
        if curve.is_server:
            zap.allow(curve.domain, curve.clients)
        curve.apply(sock)
    try:
        if bind and endpoint.startswith("ipc://"):
            _bind_private(sock, endpoint[len("ipc://"):])
        else:
            sock.bind(endpoint) if bind else sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise OSError(f"cannot {'bind' if bind else 'connect'} {endpoint}: {exc}") from None
    return sock


def _bind_private(sock: zmq.Socket, path: str) -> None:
    """Binds an ipc socket whose file is owner-only from the start: libzmq creates it in the calling
    thread, so a umask around bind covers the window before the chmod."""
    old_umask = os.umask(0o077)
    try:
        sock.bind(f"ipc://{path}")
    finally:
        os.umask(old_umask)
    bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)[len("ipc://"):]  # "ipc://*" binds a generated path
    if not bound.startswith("@"):  # "@name": Linux abstract namespace, no file
        os.chmod(bound, 0o600)


def send(sock: zmq.Socket, msg, flags: int = 0) -> None:
    sock.send_multipart(encode(msg), flags=flags, copy=False)


class Inbox:
    """Receives decoded messages from one socket; malformed ones are counted and skipped, and logged
    (the first ten, then every thousandth: a flood of bad messages is not a flood of log lines)."""

    def __init__(self, sock: zmq.Socket, name: str, accepts: tuple[type, ...]):
        self.sock, self.name, self.accepts = sock, name, accepts
        self.rejected = 0

    def recv(self, timeout_ms: int | None = None):
        """The next valid message, or None if nothing valid arrived within timeout_ms (None = wait)."""
        if timeout_ms is not None and not self.sock.poll(timeout_ms):
            return None
        frames = self.sock.recv_multipart(copy=False)
        try:
            msg = decode(frames)
        except WireError as exc:
            self.reject(str(exc))
            return None
        except Exception as exc:  # a decoder bug (the fuzz test hunts them) must not end the stage either
            self.reject(f"decoder bug, {type(exc).__name__}: {exc}")
            return None
        if not isinstance(msg, self.accepts):
            self.reject(f"unexpected {type(msg).__name__} on this socket")
            return None
        return msg

    def reject(self, reason: str) -> None:
        """Counts a message as rejected; consumers call it too, for a valid message they cannot use."""
        self.rejected += 1
        if self.rejected <= 10 or self.rejected % 1000 == 0:
            log.warning("%s: rejected message #%d: %s", self.name, self.rejected, reason)
