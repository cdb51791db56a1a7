"""The class-control protocol: list, rename, merge and delete applied to a gate and its example-crop folders,
one JSON request at a time (the cluster stage serves it; `run_pipeline.py classes` sends it or edits a file)."""
from __future__ import annotations

import json
from pathlib import Path

from models.sddc import Gate, check_name
from stages.crops import delete_crops, move_crops

COMMANDS = {"list": 0, "rename": 2, "merge": 2, "delete": 1}  # command -> number of class names it takes
CONTROL_VERSION = 1


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
