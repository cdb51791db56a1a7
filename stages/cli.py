"""The `owd` command: one entry point for running the pipeline and for the tools around it (classes, gallery, train-student, evaluate, keys)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from owd import __version__
from owd.errors import OwdError

COMMANDS = {  # name -> (what it does, an example)
    "run": ("run the pipeline on a video, image folder, camera or stream",
            "owd run --source street.mp4 --headless"),
    "classes": ("list, rename, merge or delete classes of a memory file (live when a run uses it)",
                "owd classes rename novel-1 cyclist --memory classes.npz"),
    "gallery": ("build seen classes from example images DIR/<class>/*.jpg into a memory file",
                "owd gallery examples/ --memory classes.npz"),
    "train-student": ("adapt the DINO student on the crops a run saved (self-distillation)",
                      "owd train-student --crops classes.npz.crops --init official --out student.pth"),
    "evaluate": ("score the gate and discovery on an image folder (Task 1 / Task 2)",
                 "owd evaluate --data fmnist --seen-fraction 0.5 --json m.json --predictions p.jsonl"),
    "keys": ("make the CurveZMQ key pairs that tcp:// endpoints need",
             "owd keys --out keys/"),
}


def usage(prog: str) -> str:
    lines = [f"usage: {prog} COMMAND [options]     ({prog} COMMAND --help: its options)", "",
             "Open-world object detection on live video: detect, embed, say seen class or unseen, and cluster",
             "the unseen objects into new classes, as six processes joined by ZeroMQ.", "", "commands:"]
    for name, (what, example) in COMMANDS.items():
        lines += [f"  {name:<14} {what}", f"  {'':<14}   {example.replace('owd ', prog + ' ', 1)}"]
    lines += ["", f"`{prog} --source …` without a command is `{prog} run --source …`; "
              f"`{prog} --list-models` lists the models.", f"version {__version__}"]
    return "\n".join(lines)


def _run(argv: list[str], prog: str) -> int:
    from stages import launch
    p = argparse.ArgumentParser(prog=f"{prog} run", description=COMMANDS["run"][0],
                                epilog=f"example: {COMMANDS['run'][1]}")
    launch.add_arguments(p)
    return launch.run(p.parse_args(argv))


def _classes(argv: list[str], prog: str) -> int:
    from stages import classes
    from stages.config import load
    from stages.launch import DEFAULT_CONFIG
    defaults = load(DEFAULT_CONFIG)
    return classes.main(argv, defaults.gate.alpha, defaults.cluster.max_members, prog=f"{prog} classes")


def _gallery(argv: list[str], prog: str) -> int:
    from stages import gallery, launch
    from stages.config import load
    p = argparse.ArgumentParser(prog=f"{prog} gallery", description=COMMANDS["gallery"][0],
                                epilog=f"example: {COMMANDS['gallery'][1]}")
    p.add_argument("folder", help="DIR/<class name>/*.jpg|png: one subfolder per class")
    p.add_argument("--memory", required=True, help="class memory file to add the classes to (made if absent)")
    p.add_argument("--config", default=str(launch.DEFAULT_CONFIG), help="YAML settings (its embed section counts)")
    p.add_argument("--embedder", help="embedder name (the one the runs using this memory will use)")
    p.add_argument("--embedder-weights")
    p.add_argument("--device")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    cwd = Path.cwd()
    flags = {"gate.memory": args.memory}
    for flag, key in (("embedder", "embed.model"), ("embedder_weights", "embed.weights"), ("device", "embed.device")):
        if getattr(args, flag):
            flags[key] = getattr(args, flag)
    settings = launch.absolute(load(cwd / args.config, {**flags, **launch.parse_sets(args.set)}), cwd)
    return gallery.main(settings, str(cwd / args.folder))


def _train_student(argv: list[str], prog: str) -> int:
    from models.registry import ModelError
    from stages import train_student
    p = argparse.ArgumentParser(prog=f"{prog} train-student", description=COMMANDS["train-student"][0],
                                epilog=f"example: {COMMANDS['train-student'][1]}")
    train_student.add_arguments(p)
    try:
        return train_student.run(p.parse_args(argv))
    except (ValueError, ModelError, OSError, FloatingPointError) as exc:
        raise OwdError(str(exc)) from None


def _evaluate(argv: list[str], prog: str) -> int:
    from evaluation.evaluate import main
    return main(argv, prog=f"{prog} evaluate")  # in this process: its paths stay the caller's


def _keys(argv: list[str], prog: str) -> int:
    from stages import keys
    return keys.main(argv, prog=f"{prog} keys")


HANDLERS = {"run": _run, "classes": _classes, "gallery": _gallery, "train-student": _train_student,
            "evaluate": _evaluate, "keys": _keys}


def main(argv: list[str] | None = None, prog: str = "owd") -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):  # nothing at all is a run without a source: one line, exit 2
        print(usage(prog))
        return 0
    if argv[:1] == ["--version"]:
        print(f"owd {__version__}")
        return 0
    command, rest = (argv[0], argv[1:]) if argv[:1] and argv[0] in HANDLERS else ("run", argv)
    if command == "run" and rest and not rest[0].startswith("-"):
        print(f"{prog}: unknown command {rest[0]!r}; commands: {', '.join(HANDLERS)} ({prog} --help)",
              file=sys.stderr)
        return 2
    try:
        return HANDLERS[command](rest, prog)
    except OwdError as exc:
        print(f"{prog} {command}: {exc}" if command != "run" else f"owd: {exc}", file=sys.stderr)
        return 2


def entry() -> None:
    """The installed `owd` command."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
