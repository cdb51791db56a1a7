"""Authenticated transport over real loopback tcp (CurveZMQ + ZAP allow-lists), key files and private ipc sockets."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from conftest import ROOT, frame_fields
from models.sddc import load_gate
from stages.config import ENDPOINT_NAMES, CaptureSettings, ConfigError, GateSettings, Settings, TransportSettings, load
from stages.keys import KEY_NAMES, socket_curve
from stream.messages import EndOfStream, Event, Frame
from stream.security import Curve, Zap, make_keys
from stream.sockets import Inbox, open_socket, send
from test_classes import memory
from test_stage_process import free_tcp_ports


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, **kw)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys") / "k"
    make_keys(folder, KEY_NAMES)
    return folder


def tcp_settings(keys=None, **transport) -> Settings:
    endpoints = {n: f"tcp://127.0.0.1:{p}" for n, p in zip(ENDPOINT_NAMES, free_tcp_ports(len(ENDPOINT_NAMES)))}
    return Settings(transport=TransportSettings(endpoints=endpoints, keys=keys and str(keys), **transport))


def strangers(server: bytes | None) -> dict[str, Curve | None]:
    """Clients that must not get in: one without CURVE, one with a fresh key pair that knows the server key
    (server None: plain tcp, both without CURVE)."""
    fresh_public, fresh_secret = zmq.curve_keypair()
    return {"no key": None, "unknown key": Curve(fresh_public, fresh_secret, server=server) if server else None}


def test_keys_command_writes_owner_only_files(tmp_path):
    out = tmp_path / "keys"
    result = run_cli("keys", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert mode(out) == mode(out / "private") == 0o700
    for name in KEY_NAMES:
        assert mode(out / "private" / f"{name}.key_secret") == 0o600
        assert (out / "public" / f"{name}.key").read_text().count("secret-key") == 0  # public means public
    again = run_cli("keys", "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("secure", [True, False])
def test_strangers_can_neither_read_nor_inject(keys, secure):
    """capture binds `frames` (detect reads it), sink binds `labeled` (gate writes it), over loopback tcp.
    Without keys the same strangers do read and inject: the test can tell the difference."""
    settings = tcp_settings(keys) if secure else tcp_settings(insecure_tcp=True)
    endpoints = settings.transport.endpoints
    ctx = zmq.Context()
    zap = Zap(ctx) if secure else None
    curve = {(stage, ep, bind): socket_curve(settings, stage, ep, bind) for stage, ep, bind in [
        ("capture", "frames", True), ("detect", "frames", False), ("sink", "labeled", True),
        ("gate", "labeled", False), ("sink", "frames", False), ("detect", "labeled", False)]}
    socks = []

    def sock(kind, endpoint, bind, keys):
        socks.append(open_socket(ctx, kind, endpoints[endpoint], bind=bind, linger_ms=0, curve=keys, zap=zap))
        return socks[-1]

    try:
        frames_out = sock(zmq.PUSH, "frames", True, curve["capture", "frames", True])
        labeled_in = sock(zmq.PULL, "labeled", True, curve["sink", "labeled", True])
        server_key = {ep: secure and curve[stage, ep, True].public for stage, ep in [("capture", "frames"),
                                                                                ("sink", "labeled")]}
        readers = {name: sock(zmq.PULL, "frames", False, c) for name, c in strangers(server_key["frames"]).items()}
        readers["sink's key"] = sock(zmq.PULL, "frames", False, curve["sink", "frames", False])
        writers = {name: sock(zmq.PUSH, "labeled", False, c) for name, c in strangers(server_key["labeled"]).items()}
        writers["detect's key"] = sock(zmq.PUSH, "labeled", False, curve["detect", "labeled", False])
        if secure:  # the two keyed strangers on each socket have been turned away by ZAP
            deadline = time.monotonic() + 30
            while zap.denied < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert zap.denied >= 4
        else:
            time.sleep(1.0)  # let every stranger connect
        for name, w in writers.items():
            try:
                send(w, EndOfStream(f"forged by {name}", 0), zmq.NOBLOCK)
            except zmq.Again:
                pass  # no connection to queue on: nothing sent
        detect = sock(zmq.PULL, "frames", False, curve["detect", "frames", False])
        gate = sock(zmq.PUSH, "labeled", False, curve["gate", "labeled", False])
        time.sleep(0.5)  # the legitimate peers' handshakes
        for i in range(12):
            send(frames_out, Frame(**frame_fields(i)))
        send(gate, EndOfStream("gate", 12))

        got, inbox = [], Inbox(detect, "detect", (Frame,))
        while (msg := inbox.recv(3000 if secure else 1000)) is not None:
            got.append(msg.index)
        stolen = {name: 0 for name in readers}
        for name, r in readers.items():
            while r.poll(1000 if not stolen[name] else 100):
                r.recv_multipart()
                stolen[name] += 1
        arrived = Inbox(labeled_in, "sink", (EndOfStream,))
        sources = []
        while (msg := arrived.recv(2000)) is not None:
            sources.append(msg.source)
        if secure:
            assert got == list(range(12)) and not any(stolen.values())
            assert sources == ["gate"]
        else:  # PUSH deals frames round-robin to every reader, and the forged ends arrive
            assert sum(stolen.values()) > 0 and len(got) < 12
            assert "gate" in sources and len(sources) > 1
    finally:
        for s in socks:
            s.close()
        if zap is not None:
            zap.close()
        ctx.term()


def test_tcp_without_keys_is_refused(keys, tmp_path):
    tcp = {"transport.endpoints": {"frames": "tcp://127.0.0.1:5999"}}
    with pytest.raises(ConfigError, match="'transport.endpoints.frames' is tcp but 'transport.keys' is unset"):
        load(None, tcp)
    assert load(None, {**tcp, "transport.insecure_tcp": True}).transport.insecure_tcp
    assert load(None, {**tcp, "transport.keys": str(keys)}).transport.keys == str(keys)
    for address in ["udp://127.0.0.1:5999", "ipc://@owd-frames"]:  # @: abstract ipc, no file to protect
        with pytest.raises(ConfigError, match="ipc://PATH or tcp://HOST:PORT"):
            load(None, {"transport.endpoints": {"frames": address}})
    settings = tcp_settings()  # built in code, bypassing load: the stage still refuses
    with pytest.raises(ConfigError, match="tcp without transport.keys"):
        socket_curve(settings, "capture", "frames", True)
    result = run_cli("--source", "x.mp4", "--set", "transport.endpoints.frames=tcp://127.0.0.1:5999")
    assert result.returncode == 2 and "transport.keys" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_or_exposed_keys_are_refused(tmp_path):
    folder = tmp_path / "k"
    make_keys(folder, ("capture", "detect"))
    settings = tcp_settings(folder)
    assert socket_curve(settings, "capture", "frames", True).clients  # detect's key is its allow-list
    with pytest.raises(ConfigError, match="sink.key_secret is missing"):
        socket_curve(settings, "sink", "labeled", True)
    os.chmod(folder / "private" / "capture.key_secret", 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        socket_curve(settings, "capture", "frames", True)
    with pytest.raises(ValueError, match="ZAP"):  # a CURVE server without ZAP would let any key in
        open_socket(zmq.Context.instance(), zmq.PUSH, "tcp://127.0.0.1:1", bind=True,
                    curve=Curve(*zmq.curve_keypair(), domain="frames"))


def test_bound_ipc_sockets_are_owner_only(tmp_path):
    ctx = zmq.Context()
    sock = open_socket(ctx, zmq.PULL, f"ipc://{tmp_path}/s", bind=True, linger_ms=0)
    try:
        assert mode(tmp_path / "s") == 0o600
    finally:
        sock.close()
        ctx.term()


def test_capture_process_over_curve_serves_only_its_reader(keys, bikes_video):
    """A real capture stage on loopback tcp with CURVE: the keyed detect reads every frame and the end
    of stream; a reader with an unknown key and one without CURVE get nothing."""
    settings = tcp_settings(keys)
    settings = Settings(capture=CaptureSettings(source=str(bikes_video), max_frames=6), transport=settings.transport)
    endpoints = settings.transport.endpoints
    ctx = zmq.Context()
    zap = Zap(ctx)
    events = open_socket(ctx, zmq.PULL, endpoints["events"], bind=True, linger_ms=0, zap=zap,
                         curve=socket_curve(settings, "sink", "events", True))
    server = socket_curve(settings, "detect", "frames", False).server
    readers = {name: open_socket(ctx, zmq.PULL, endpoints["frames"], bind=False, linger_ms=0, curve=c)
               for name, c in strangers(server).items()}
    proc = subprocess.Popen([sys.executable, "-m", "stages", "capture"], stdin=subprocess.PIPE, cwd=ROOT)
    proc.stdin.write(settings.to_json().encode())
    proc.stdin.close()
    detect = None
    try:
        started = Inbox(events, "events", (Event,)).recv(60000)
        assert started is not None and started.record["type"] == "stage_started"
        time.sleep(1.0)  # the strangers had their chance to connect first
        detect = open_socket(ctx, zmq.PULL, endpoints["frames"], bind=False, linger_ms=0,
                             curve=socket_curve(settings, "detect", "frames", False))
        inbox, got, msg = Inbox(detect, "detect", (Frame, EndOfStream)), [], None
        while not isinstance(msg, EndOfStream):
            msg = inbox.recv(30000)
            assert msg is not None, f"frames stopped after {got}"
            got.append(getattr(msg, "index", "end"))
        assert got == [0, 1, 2, 3, 4, 5, "end"]
        assert proc.wait(timeout=30) == 0
        assert not any(r.poll(500) for r in readers.values())
    finally:
        if proc.poll() is None:
            proc.kill()
        for s in [events, *readers.values(), *([detect] if detect else [])]:
            s.close()
        zap.close()
        ctx.term()


def test_pipeline_over_curve_with_a_private_run_folder(keys, bikes_video, tmp_path, own_tmpdir):
    """The whole pipeline with most endpoints on CURVE tcp and two on ipc: it runs to the end, and while it
    runs its ipc folder is 0700, its sockets and the control socket beside the memory file are 0600."""
    ports = dict(zip(["frames", "detections", "embeddings", "classes", "events"], free_tcp_ports(5)))
    # the run folder goes in the test's own TMPDIR, short enough for ipc paths (tmp_path may not be)
    events, memory, tmp = tmp_path / "ev.jsonl", tmp_path / "m.npz", Path(own_tmpdir)
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--source", str(bikes_video), "--headless",
           "--events", str(events), "--memory", str(memory), "--max-frames", "12", "--set", f"transport.keys={keys}",
           *[arg for name, port in ports.items()
             for arg in ("--set", f"transport.endpoints.{name}=tcp://127.0.0.1:{port}")]]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    seen: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline and len(seen) < 6:
            for path in [*tmp.glob("owd-*"), *tmp.glob("owd-*/*"), tmp_path / "m.npz.ctl"]:
                if path.exists() and not path.name.startswith("status.json"):  # the sink's counts, not a socket
                    seen[path.name if path.parent != tmp else "run folder"] = mode(path)
            time.sleep(0.05)
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert seen == {"run folder": 0o700, "labeled": 0o600, "unseen": 0o600, "acks": 0o600, "to_embed": 0o600,
                    "m.npz.ctl": 0o600}
    with open(events) as f:
        frames = [r["frame"] for r in map(json.loads, f) if r["type"] == "frame"]
    assert sorted(frames) == list(range(12))
    assert mode(memory) == 0o600 and not list(tmp.glob("owd-*"))  # the run folder went with the run


def test_classes_command_over_curve_tcp(keys, tmp_path):
    """A real cluster process serves its control socket on CURVE tcp: `classes --keys` reaches it; another
    key set, or no keys, does not."""
    path = tmp_path / "m.npz"
    memory(path)
    settings = tcp_settings(keys)
    settings = Settings(gate=GateSettings(memory=str(path)), transport=settings.transport)
    endpoints = settings.transport.endpoints
    ctx = zmq.Context()
    zap = Zap(ctx)
    events = Inbox(open_socket(ctx, zmq.PULL, endpoints["events"], bind=True, linger_ms=0, zap=zap,
                               curve=socket_curve(settings, "sink", "events", True)), "events", (Event, EndOfStream))
    unseen = open_socket(ctx, zmq.PUSH, endpoints["unseen"], bind=False, linger_ms=0,
                         curve=socket_curve(settings, "gate", "unseen", False))
    proc = subprocess.Popen([sys.executable, "-m", "stages", "cluster"], stdin=subprocess.PIPE, cwd=ROOT)
    proc.stdin.write(settings.to_json().encode())
    proc.stdin.close()
    other = tmp_path / "other-keys"
    make_keys(other, KEY_NAMES)
    try:
        assert events.recv(60000).record["type"] == "stage_started"
        control = ["--memory", str(path), "--control", endpoints["control"]]
        ok = run_cli("classes", "rename", "novel-1", "cyclist", *control, "--keys", str(keys))
        assert ok.returncode == 0 and "cyclist" in ok.stdout, ok.stderr
        assert events.recv(10000).record["type"] == "class_renamed"
        wrong = run_cli("classes", "delete", "cyclist", *control, "--keys", str(other))
        assert wrong.returncode == 2 and "no answer" in wrong.stderr
        bare = run_cli("classes", "delete", "cyclist", *control)
        assert bare.returncode == 2 and "transport.keys" in bare.stderr
        send(unseen, EndOfStream("t", 0))
        assert proc.wait(timeout=30) == 0
        assert load_gate(path).names == ["cyclist", "novel-2", "novel-3"]  # only the keyed command applied
    finally:
        if proc.poll() is None:
            proc.kill()
        events.sock.close()
        unseen.close()
        zap.close()
        ctx.term()
