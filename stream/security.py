"""CurveZMQ for tcp sockets: key pairs on disk, the keys a socket uses, and a ZAP handler enforcing client allow-lists."""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SECRET_SUFFIX, PUBLIC_SUFFIX = ".key_secret", ".key"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Curve:
    """The CURVE keys of one socket, z85 bytes. A server (binding side) lists the client public keys
    its ZAP domain accepts; a client names the server public key it expects."""
    public: bytes
    secret: bytes
    server: bytes | None = None          # client side: the binding peer's public key
    domain: str = ""                     # server side: ZAP domain, one allow-list per domain
    clients: frozenset[bytes] = frozenset()  # server side: client public keys allowed in

    @property
    def is_server(self) -> bool:
        return self.server is None

    def apply(self, sock: zmq.Socket) -> None:
        """Sets the socket options; call before bind/connect."""
        sock.curve_publickey, sock.curve_secretkey = self.public, self.secret
        if self.is_server:
            sock.setsockopt(zmq.ZAP_DOMAIN, self.domain.encode())
            sock.curve_server = True
        else:
            sock.curve_serverkey = self.server


class Zap:
    """The ZAP handler of one context (pyzmq's ThreadAuthenticator on inproc://zeromq.zap.01).

    Without a ZAP handler libzmq lets any client that knows the server key in; with this one a CURVE
    client is let in only when its public key is on the allow-list of the socket's domain. Stop it
    (close) before terminating the context."""

    def __init__(self, ctx: zmq.Context):
        self._allowed: dict[str, frozenset[bytes]] = {}
        self.denied = 0  # handshakes refused (a key not on the list); clients without CURVE fail before ZAP
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()

    def allow(self, domain: str, clients: frozenset[bytes]) -> None:
        self._allowed[domain] = self._allowed.get(domain, frozenset()) | clients
        self._auth.configure_curve_callback(domain, self)

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the authenticator thread for every CURVE handshake; key is z85."""
        if key in self._allowed.get(domain, frozenset()):
            return True
        self.denied += 1
        log.warning("refused CURVE client key %s on %s (%d refused)", key.decode(errors="replace"), domain, self.denied)
        return False

    def close(self) -> None:
        self._auth.stop()


def make_keys(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """A fresh key pair per name: folder/public/NAME.key (the allow-lists) and folder/private/NAME.key_secret,
    secrets owner-only (0600) in owner-only folders (0700). Refuses to overwrite existing keys."""
    public, private = folder / "public", folder / "private"
    paths = [p for n in names for p in (public / f"{n}{PUBLIC_SUFFIX}", private / f"{n}{SECRET_SUFFIX}")]
    existing = [p for p in paths if p.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} exists; remove the old keys first (every host needs the new ones)")
    for sub in (folder, public, private):
        sub.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(sub, 0o700)
    written = []
    old_umask = os.umask(0o077)  # the secret file is owner-only from its first byte
    try:
        for name in names:
            pub, sec = zmq.auth.create_certificates(private, name)
            os.chmod(sec, 0o600)
            os.replace(pub, public / Path(pub).name)
            written += [public / Path(pub).name, Path(sec)]
    finally:
        os.umask(old_umask)
    return written


def load_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) of a NAME.key_secret file; ValueError when missing, broken or readable by others."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        raise ValueError(f"secret key {path} is missing") from None
    if mode & 0o077:
        raise ValueError(f"secret key {path} is readable by others (mode {mode:o}); chmod 600 it")
    public, secret = zmq.auth.load_certificate(path)
    if not secret:
        raise ValueError(f"{path} holds no secret key")
    return public, secret


def load_public(path: Path) -> bytes:
    """The public key of a NAME.key file; ValueError when missing or broken."""
    try:
        return zmq.auth.load_certificate(path)[0]
    except OSError:
        raise ValueError(f"public key {path} is missing") from None
