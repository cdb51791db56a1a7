"""Naming classes: list, rename, merge, delete — in a memory file, or live through a running pipeline's control socket."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import zmq

from models.sddc import load_gate, save_gate
from stages.config import ConfigError, Settings, TransportSettings, memory_crops
from stages.control import COMMANDS, CONTROL_VERSION, describe, execute
from stages.keys import socket_curve
from stream.security import Curve
from stream.sockets import open_socket


IPC_MAX = getattr(zmq, "IPC_PATH_MAX_LEN", 0) or 107  # a unix socket's path (sockaddr_un.sun_path) holds no more


def control_endpoint(memory: str) -> str:
    """A running pipeline with --memory PATH answers commands on the ipc socket PATH.ctl; when that path is
    too long for a unix socket, on one named by the path's hash in the user's private folder (`short_dir`),
    so the pipeline and `owd classes` still derive the same endpoint from the memory path alone."""
    path = f"{Path(memory).resolve()}.ctl"
    if len(path.encode()) <= IPC_MAX:
        return f"ipc://{path}"
    return f"ipc://{short_dir() / hashlib.sha256(path.encode()).hexdigest()[:32]}.ctl"


def short_dir(base: Path = Path("/tmp")) -> Path:
    """base/owd-UID, made owner-only; refused unless it is a real folder of this user that no one else can
    enter (another user could otherwise put a socket of their own where the pipeline's is looked for)."""
    folder = base / f"owd-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.lstat()
    except OSError as exc:
        raise ConfigError(f"cannot make the control socket folder {folder}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ConfigError(f"{folder} is not a folder only this user can enter: remove it, or give --memory a "
                          f"shorter path")
    return folder


def request(endpoint: str, cmd: str, args: list[str], timeout_ms: int = 3000,
            curve: Curve | None = None) -> dict | None:
    """Sends one command to a running pipeline; None when nothing answers (no pipeline running)."""
    ctx = zmq.Context()
    sock = open_socket(ctx, zmq.REQ, endpoint, bind=False, linger_ms=0, curve=curve)
    try:
        sock.send(json.dumps({"v": CONTROL_VERSION, "cmd": cmd, "args": args}).encode())
        return json.loads(sock.recv()) if sock.poll(timeout_ms) else None
    finally:
        sock.close()
        ctx.term()


def main(argv: list[str], alpha: float = 0.75, keep: int = 256, prog: str = "owd classes") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("cmd", choices=sorted(COMMANDS))
    p.add_argument("names", nargs="*")
    p.add_argument("--memory", required=True, help="class memory file (the pipeline's --memory)")
    p.add_argument("--control", help="control endpoint of a running pipeline (default: ipc://MEMORY.ctl)")
    p.add_argument("--keys", help="the pipeline's transport.keys folder, for a tcp:// control endpoint")
    p.add_argument("--insecure-tcp", action="store_true", help="a tcp:// control endpoint without keys")
    args = p.parse_args(argv)
    try:
        endpoint = args.control or control_endpoint(args.memory)
        transport = TransportSettings(endpoints={"control": endpoint}, keys=args.keys, insecure_tcp=args.insecure_tcp)
        curve = socket_curve(Settings(transport=transport), "classes", "control", bind=False)
        live = Path(endpoint[len("ipc://"):]).exists() if endpoint.startswith("ipc://") else True
        reply = request(endpoint, args.cmd, args.names, curve=curve) if live else None
    except (ConfigError, OSError) as exc:
        print(f"owd classes: {exc}", file=sys.stderr)
        return 2
    if reply is None and not endpoint.startswith("ipc://"):  # a pipeline elsewhere would overwrite a local edit
        print(f"owd classes: no answer from {endpoint} (is the pipeline running, are --keys its transport.keys?)",
              file=sys.stderr)
        return 2
    if reply is None:  # no running pipeline: edit the file
        if not Path(args.memory).exists():
            print(f"owd classes: no class memory at {args.memory}", file=sys.stderr)
            return 2
        try:
            gate = load_gate(args.memory)
            result = execute(gate, args.cmd, args.names, alpha, keep, memory_crops(args.memory))
        except ValueError as exc:
            print(f"owd classes: {exc}", file=sys.stderr)
            return 2
        if args.cmd != "list":
            save_gate(gate, args.memory)
        reply = {"ok": True, "classes": describe(gate)} if "classes" not in result else {"ok": True, **result}
    if not reply.get("ok"):
        print(f"owd classes: {reply.get('error')}", file=sys.stderr)
        return 2
    for c in reply["classes"]:
        print(f"{c['class']:20s} size {c['size']:6d}  radius {c['radius']:.4f}  set {c['set']}")
    return 0
