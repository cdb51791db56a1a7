"""Naming classes: rename / merge / delete / list on a memory file, and live on a running cluster process."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from conftest import ROOT
from models.sddc import Gate, load_gate, normalize, save_gate
from stages.classes import control_endpoint, execute
from stages.config import ENDPOINT_NAMES, GateSettings, Settings, TransportSettings, memory_crops
from stream.messages import ClassUpdate, EndOfStream, Event
from stream.sockets import Inbox, open_socket, send

DIM = 8


def memory(path, names=("novel-1", "novel-2", "novel-3")) -> Gate:
    rng = np.random.default_rng(0)
    gate = Gate.empty(DIM)
    for i, name in enumerate(names):
        gate.add_members(name, normalize(np.eye(DIM)[i] + 0.05 * rng.normal(size=(10, DIM))), 0.75)
    save_gate(gate, path)
    return gate


def classes_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "classes", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_execute_rename_merge_delete(tmp_path):
    gate = memory(tmp_path / "m.npz")
    crops = tmp_path / "crops"
    (crops / "novel-1").mkdir(parents=True)
    (crops / "novel-1" / "000.png").write_bytes(b"png")
    assert execute(gate, "rename", ["novel-1", "cyclist"], 0.75, 256, crops)["type"] == "class_renamed"
    assert gate.names == ["cyclist", "novel-2", "novel-3"] and (crops / "cyclist").is_dir()
    assert not (crops / "novel-1").exists()
    size = int(gate.sizes[1] + gate.sizes[2])
    event = execute(gate, "merge", ["novel-3", "novel-2"], 0.75, 256, crops)
    assert event == {"type": "class_merged", "class": "novel-2", "merged": "novel-3", "size": size}
    assert gate.names == ["cyclist", "novel-2"] and len(gate.centroids) == 2
    execute(gate, "delete", ["cyclist"], 0.75, 256, crops)
    assert gate.names == ["novel-2"] and not (crops / "cyclist").exists()
    for cmd, args in [("rename", ["nope", "x"]), ("rename", ["novel-2", "novel-2"]), ("merge", ["novel-2", "novel-2"]),
                      ("delete", []), ("explode", ["novel-2"])]:
        with pytest.raises(ValueError):
            execute(gate, cmd, args, 0.75, 256, crops)


def test_cli_edits_the_memory_file(tmp_path):
    path = tmp_path / "m.npz"
    memory(path)
    result = classes_cli("rename", "novel-2", "van", "--memory", str(path))
    assert result.returncode == 0, result.stderr
    assert "van" in result.stdout and load_gate(path).names == ["novel-1", "van", "novel-3"]
    listed = classes_cli("list", "--memory", str(path))
    assert listed.returncode == 0 and [line.split()[0] for line in listed.stdout.splitlines()] == \
        ["novel-1", "van", "novel-3"]
    bad = classes_cli("delete", "ghost", "--memory", str(path))
    assert bad.returncode == 2 and "no class 'ghost'" in bad.stderr and "Traceback" not in bad.stderr
    missing = classes_cli("list", "--memory", str(tmp_path / "none.npz"))
    assert missing.returncode == 2 and "no class memory" in missing.stderr


def test_rename_merge_delete_on_a_live_cluster_process(tmp_path):
    path = tmp_path / "m.npz"
    memory(path)
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ENDPOINT_NAMES}
    endpoints["control"] = control_endpoint(str(path))
    settings = Settings(gate=GateSettings(memory=str(path)), transport=TransportSettings(endpoints=endpoints))
    ctx = zmq.Context()
    unseen = open_socket(ctx, zmq.PUSH, endpoints["unseen"], bind=False, linger_ms=0)
    classes = open_socket(ctx, zmq.SUB, endpoints["classes"], bind=False, linger_ms=0)
    events = Inbox(open_socket(ctx, zmq.PULL, endpoints["events"], bind=True, linger_ms=0), "ev", (Event, EndOfStream))
    proc = subprocess.Popen([sys.executable, "-m", "stages", "cluster"], stdin=subprocess.PIPE, cwd=ROOT)
    proc.stdin.write(settings.to_json().encode())
    proc.stdin.close()
    try:
        assert events.recv(20000).record["type"] == "stage_started"
        time.sleep(0.3)  # let the SUB subscription reach the publisher
        for args, event in [(["rename", "novel-1", "cyclist"], "class_renamed"),
                            (["merge", "novel-3", "novel-2"], "class_merged"),
                            (["delete", "novel-2"], "class_deleted")]:
            result = classes_cli(*args, "--memory", str(path))
            assert result.returncode == 0, result.stderr
            rec = events.recv(10000).record
            assert rec["type"] == event
            assert classes.poll(5000)
            update = Inbox(classes, "classes", (ClassUpdate,)).recv(0)
        assert update.names == ("cyclist",)  # what the gate now labels with
        assert load_gate(path).names == ["cyclist"]  # saved at once
        assert "cyclist" in classes_cli("list", "--memory", str(path)).stdout
        send(unseen, EndOfStream("t", 0))
        assert proc.wait(timeout=20) == 0
        assert not (tmp_path / "m.npz.ctl").exists()  # the control socket file goes with the process
    finally:
        if proc.poll() is None:
            proc.kill()
        for sock in (unseen, classes, events.sock):
            sock.close()
        ctx.term()


def test_names_cannot_escape_the_crops_folder(tmp_path):
    """The traversal from issue 9: rename a class to a path, then delete it — it must stay a name."""
    path = tmp_path / "data" / "m.npz"
    path.parent.mkdir()
    memory(path)
    (memory_crops(str(path)) / "novel-1").mkdir(parents=True)
    (memory_crops(str(path)) / "novel-1" / "000.png").write_bytes(b"png")
    victim = tmp_path / "x"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    escape = "../../x"  # memory_crops(path) / escape is tmp_path / "x"
    renamed = classes_cli("rename", "novel-1", escape, "--memory", str(path))
    deleted = classes_cli("delete", escape, "--memory", str(path))
    assert (victim / "keep.txt").read_text() == "precious" and sorted(victim.iterdir()) == [victim / "keep.txt"]
    assert renamed.returncode == 2 and "class name" in renamed.stderr and "Traceback" not in renamed.stderr
    assert deleted.returncode == 2 and load_gate(path).names == ["novel-1", "novel-2", "novel-3"]
