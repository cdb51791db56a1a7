"""Naming classes: list, rename, merge, delete — in a memory file, or live through a running pipeline's control socket."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import zmq

from models.sddc import Gate, check_name, load_gate, save_gate
from stages.config import ConfigError, Settings, TransportSettings, memory_crops
from stages.crops import delete_crops, move_crops
from stages.keys import socket_curve
from stream.security import Curve
from stream.sockets import open_socket

COMMANDS = {"list": 0, "rename": 2, "merge": 2, "delete": 1}  # command -> number of class names it takes
CONTROL_VERSION = 1


def control_endpoint(memory: str) -> str:
    """A running pipeline with --memory PATH answers commands on the ipc socket PATH.ctl."""
    return f"ipc://{Path(memory).resolve()}.ctl"


def describe(gate: Gate) -> list[dict]:
    return [{"class": n, "size": int(gate.sizes[i]), "radius": round(float(gate.radii[i]), 4),
             "set": int(gate.set_ids[i])} for i, n in enumerate(gate.names)]


def execute(gate: Gate, cmd: str, args: list[str], alpha: float, keep: int, crops_dir: Path | None) -> dict:
    """Applies one command to `gate` (and to the example-crop folders); returns the event record
    fields it produced ("type" and the names), or {"classes": [...]} for list. ValueError if it can't."""
    if COMMANDS.get(cmd) != len(args):
        raise ValueError(f"usage: classes {cmd} {' '.join(['NAME'] * COMMANDS.get(cmd, 0))}".strip()
                         if cmd in COMMANDS else f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
    if cmd == "list":
        return {"classes": describe(gate)}
    for name in args:  # names come from a command line or a socket: check them before anything uses them
        check_name(name)
    if cmd == "rename":
        gate.rename(args[0], args[1])
        move_crops(crops_dir, args[0], args[1])
        return {"type": "class_renamed", "class": args[1], "old": args[0]}
    if cmd == "merge":
        gate.merge(args[0], args[1], alpha, keep)
        move_crops(crops_dir, args[0], args[1])
        return {"type": "class_merged", "class": args[1], "merged": args[0], "size": int(gate.sizes[gate.names.index(args[1])])}
    gate.remove(args[0])
    delete_crops(crops_dir, args[0])
    return {"type": "class_deleted", "class": args[0]}


def handle(request: bytes, gate: Gate, alpha: float, keep: int, crops_dir: Path | None) -> tuple[dict, dict | None]:
    """One control request -> (reply, event fields or None). Never raises on bad input."""
    try:
        msg = json.loads(request)
        if not isinstance(msg, dict) or msg.get("v") != CONTROL_VERSION:
            raise ValueError(f"control protocol version must be {CONTROL_VERSION}")
        args = msg.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError("args must be a list of class names")
        result = execute(gate, str(msg.get("cmd")), args, alpha, keep, crops_dir)
    except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        return {"ok": False, "error": str(exc)}, None
    if "classes" in result:
        return {"ok": True, **result}, None
    return {"ok": True, "event": result, "classes": describe(gate)}, result


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
    endpoint = args.control or control_endpoint(args.memory)
    try:
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
