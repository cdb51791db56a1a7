"""Naming classes: rename / merge / delete / list on a memory file, and live on a running cluster process."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from conftest import ROOT
from models.sddc import Gate, load_gate, normalize, save_gate
from stages.classes import IPC_MAX, control_endpoint, short_dir
from stages.control import execute, handle
from stages.cluster import save_examples
from stages.config import ENDPOINT_NAMES, ConfigError, GateSettings, Settings, TransportSettings, memory_crops
from stages.crops import class_folder, delete_crops
from stages.gallery import read_gallery
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
            assert stat.S_IMODE(os.stat(endpoints["control"][len("ipc://"):]).st_mode) == 0o600  # only its owner may command
            result = classes_cli(*args, "--memory", str(path))
            assert result.returncode == 0, result.stderr
            rec = events.recv(10000).record
            assert rec["type"] == event
            assert classes.poll(5000)
            update = Inbox(classes, "classes", (ClassUpdate,)).recv(0)
        assert update.names == ("cyclist",)  # what the gate now labels with
        assert load_gate(path).names == ["cyclist"]  # saved at once
        assert "cyclist" in classes_cli("list", "--memory", str(path)).stdout
        bad = classes_cli("rename", "cyclist", "../../x", "--memory", str(path))  # through the socket
        assert bad.returncode == 2 and "class name '../../x' is not allowed" in bad.stderr
        send(unseen, EndOfStream("t", 0))
        assert proc.wait(timeout=20) == 0
        assert not os.path.exists(endpoints["control"][len("ipc://"):])  # the socket file goes with the process
    finally:
        if proc.poll() is None:
            proc.kill()
        for sock in (unseen, classes, events.sock):
            sock.close()
        ctx.term()


def test_a_memory_path_too_long_for_a_unix_socket_gets_a_short_private_control_socket(tmp_path):
    short = control_endpoint(str(tmp_path / "m.npz"))
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "m.npz"  # a unix socket's path holds IPC_MAX bytes at most
    long = control_endpoint(str(deep))
    assert len(long) - len("ipc://") <= IPC_MAX and long == control_endpoint(str(deep))  # derived, the same each time
    assert long != control_endpoint(str(deep.with_name("n.npz")))
    if len(short) - len("ipc://") <= IPC_MAX:
        assert short == f"ipc://{(tmp_path / 'm.npz').resolve()}.ctl"
    folder = os.path.dirname(long[len("ipc://"):])
    assert stat.S_IMODE(os.stat(folder).st_mode) & 0o077 == 0 and os.stat(folder).st_uid == os.getuid()
    ctx = zmq.Context()
    try:  # it binds, where the long path cannot
        open_socket(ctx, zmq.REP, long, bind=True, linger_ms=0).close()
        with pytest.raises(OSError, match="longer than|too long|Invalid argument|name too long"):
            open_socket(ctx, zmq.REP, f"ipc://{deep}.ctl", bind=True, linger_ms=0)
    finally:
        ctx.term()


def test_a_control_folder_others_can_enter_is_refused(tmp_path):
    (tmp_path / f"owd-{os.getuid()}").mkdir(mode=0o777)
    os.chmod(tmp_path / f"owd-{os.getuid()}", 0o777)
    with pytest.raises(ConfigError, match="not a folder only this user can enter"):
        short_dir(tmp_path)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.rmdir(tmp_path / f"owd-{os.getuid()}")
    os.symlink(tmp_path / "elsewhere", tmp_path / f"owd-{os.getuid()}")  # a link to a folder is not one
    with pytest.raises(ConfigError, match="not a folder only this user can enter"):
        short_dir(tmp_path)
    os.unlink(tmp_path / f"owd-{os.getuid()}")
    assert short_dir(tmp_path) == tmp_path / f"owd-{os.getuid()}"


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


BAD_NAMES = ["", "a" * 65, "../x", "a/b", "..", ".", "a b", "x\n", "caf\u00e9", "\u0430bc", "unseen", "a.png"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_class_names_are_refused_where_they_enter(tmp_path, name):
    gate = memory(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="class name"):
        gate.add(name, gate.centroids[0], 0.1, 1)
    with pytest.raises(ValueError, match="class name"):
        gate.rename("novel-1", name)
    for cmd, args in [("rename", ["novel-1", name]), ("merge", [name, "novel-2"]), ("delete", [name])]:
        with pytest.raises(ValueError, match="class name"):
            execute(gate, cmd, args, 0.75, 256, tmp_path / "crops")
        reply, event = handle(json.dumps({"v": 1, "cmd": cmd, "args": args}).encode(), gate, 0.75, 256, None)
        assert not reply["ok"] and "class name" in reply["error"] and event is None
    assert gate.names == ["novel-1", "novel-2", "novel-3"]
    forged = Gate([name, "novel-2"], gate.centroids[:2], gate.radii[:2], gate.sizes[:2], gate.set_ids[:2])
    save_gate(forged, tmp_path / "forged.npz")  # a memory file edited by someone else
    with pytest.raises(ValueError, match="class name"):
        load_gate(tmp_path / "forged.npz")


def test_control_requests_of_the_wrong_shape_are_answered_not_raised(tmp_path):
    gate = memory(tmp_path / "m.npz")
    for raw in [b"\xff", b"[]", b'{"v": 1, "cmd": "delete", "args": "novel-1"}',
                b'{"v": 1, "cmd": "delete", "args": [1]}',
                b"[" * 100000 + b"]" * 100000]:
        reply, event = handle(raw, gate, 0.75, 256, None)
        assert not reply["ok"] and event is None
    assert gate.names == ["novel-1", "novel-2", "novel-3"]


def test_gallery_folder_names_are_class_names(tmp_path):
    (tmp_path / "g" / "bad name").mkdir(parents=True)
    (tmp_path / "g" / ".hidden").mkdir()
    with pytest.raises(ConfigError, match="gallery .*class name 'bad name'"):
        read_gallery(tmp_path / "g")


def test_crop_folders_stay_inside_even_through_links(tmp_path):
    crops, outside = tmp_path / "crops", tmp_path / "outside"
    crops.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (crops / "novel-1").symlink_to(outside)  # planted by someone who can write the crops folder
    with pytest.raises(ValueError, match="leads outside"):
        delete_crops(crops, "novel-1")
    assert (outside / "keep.txt").exists()
    assert class_folder(crops, "novel-2") == crops / "novel-2"


@pytest.fixture
def umask_022():
    """A typical umask: files 0644 unless the code says otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_crops_and_memory_are_owner_only(tmp_path, umask_022):
    path = tmp_path / "m.npz"
    (tmp_path / "m.npz.tmp").write_bytes(b"stale")  # left by a crash, 0644
    memory(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and not (tmp_path / "m.npz.tmp").exists()
    folder = memory_crops(str(path)) / "novel-1"
    save_examples(folder, np.zeros((3, 16, 16, 3), np.uint8), limit=8)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 3 and {stat.S_IMODE(os.stat(p).st_mode) for p in pngs} == {0o600}
