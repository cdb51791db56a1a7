"""Naming classes: list, rename, merge, delete — in a memory file, or live through a running pipeline's control socket."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import zmq

from models.sddc import Gate, load_gate, save_gate
from stages.config import memory_crops

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
    if cmd == "rename":
        gate.rename(args[0], args[1])
        _move_examples(crops_dir, args[0], args[1])
        return {"type": "class_renamed", "class": args[1], "old": args[0]}
    if cmd == "merge":
        gate.merge(args[0], args[1], alpha, keep)
        _move_examples(crops_dir, args[0], args[1])
        return {"type": "class_merged", "class": args[1], "merged": args[0], "size": int(gate.sizes[gate.names.index(args[1])])}
    gate.remove(args[0])
    if crops_dir is not None:
        shutil.rmtree(crops_dir / args[0], ignore_errors=True)
    return {"type": "class_deleted", "class": args[0]}


def _move_examples(crops_dir: Path | None, old: str, new: str) -> None:
    """old's example crops join new's folder (renamed so none is overwritten)."""
    src = crops_dir / old if crops_dir is not None else None
    if src is None or not src.is_dir():
        return
    dst = crops_dir / new
    dst.mkdir(parents=True, exist_ok=True)
    for i, png in enumerate(sorted(src.glob("*.png"))):
        png.rename(dst / f"{old}-{i:03d}.png")
    shutil.rmtree(src, ignore_errors=True)


def handle(request: bytes, gate: Gate, alpha: float, keep: int, crops_dir: Path | None) -> tuple[dict, dict | None]:
    """One control request -> (reply, event fields or None). Never raises on bad input."""
    try:
        msg = json.loads(request)
        if not isinstance(msg, dict) or msg.get("v") != CONTROL_VERSION:
            raise ValueError(f"control protocol version must be {CONTROL_VERSION}")
        result = execute(gate, str(msg.get("cmd")), [str(a) for a in msg.get("args", [])], alpha, keep, crops_dir)
    except (ValueError, TypeError) as exc:
        return {"ok": False, "error": str(exc)}, None
    if "classes" in result:
        return {"ok": True, **result}, None
    return {"ok": True, "event": result, "classes": describe(gate)}, result


def request(endpoint: str, cmd: str, args: list[str], timeout_ms: int = 3000) -> dict | None:
    """Sends one command to a running pipeline; None when nothing answers (no pipeline running)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(json.dumps({"v": CONTROL_VERSION, "cmd": cmd, "args": args}).encode())
        return json.loads(sock.recv()) if sock.poll(timeout_ms) else None
    finally:
        sock.close()
        ctx.term()


def main(argv: list[str], alpha: float = 0.75, keep: int = 256) -> int:
    p = argparse.ArgumentParser(prog="run_pipeline.py classes", description=__doc__)
    p.add_argument("cmd", choices=sorted(COMMANDS))
    p.add_argument("names", nargs="*")
    p.add_argument("--memory", required=True, help="class memory file (the pipeline's --memory)")
    p.add_argument("--control", help="control endpoint of a running pipeline (default: ipc://MEMORY.ctl)")
    args = p.parse_args(argv)
    endpoint = args.control or control_endpoint(args.memory)
    live = Path(endpoint[len("ipc://"):]).exists() if endpoint.startswith("ipc://") else True
    reply = request(endpoint, args.cmd, args.names) if live else None
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
