"""Cluster stage: the process around models/discovery.py — buffers unseen boxes, discovers classes, serves the control socket."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import zmq

from models.discovery import DiscoveryRules, discover
from models.unseen import UnseenBuffer
from models.sddc import Gate, load_memory, save_gate
from stages.control import handle
from stages.config import ClusterSettings
from stages.crops import private_folder, write_png
from stages.process import StageProcess
from stream.messages import ClassUpdate, EndOfStream, UnseenBatch
from stream.sockets import send


def save_examples(folder: Path, thumbs: list[np.ndarray], limit: int) -> None:
    """Up to `limit` example crops per class folder (numbered PNGs, owner-only: they show people); a person
    looks at them to name the class."""
    private_folder(folder)
    have = len(list(folder.glob("*.png")))
    for i, thumb in enumerate(thumbs[:max(limit - have, 0)]):
        write_png(folder / f"{have + i:03d}.png", thumb)


def snapshot(gate: Gate, version: int) -> ClassUpdate:
    center = np.zeros(0, np.float32) if gate.center is None else gate.center
    return ClassUpdate(version, tuple(gate.names), gate.centroids, gate.radii, gate.sizes, gate.set_ids, center)


def run(stage: StageProcess) -> int:
    s, g = stage.settings.cluster, stage.settings.gate
    inbox = stage.inbox(stage.socket("unseen"), "cluster", (UnseenBatch, EndOfStream))
    publish = stage.socket("classes")
    control = stage.socket("control")
    gate = load_memory(g.memory, g.set_size, g.radius_pool)
    buffer = UnseenBuffer(s.buffer_size, s.per_track)
    rules = DiscoveryRules.from_settings(s)
    crops_dir = stage.settings.crops_dir
    version, new_rows, last_run = 0, 0, time.monotonic()  # the gate applies every snapshot in order, whatever its version
    by_frames = not stage.live and s.period_frames > 0  # file sources: rounds when the gate asks (stages/gate.py Rounds)
    done_rounds: dict[str, int] = {}  # source -> the frame of the last round run for it (a repeat is not rerun)
    poller = zmq.Poller()
    poller.register(inbox.sock, zmq.POLLIN)
    poller.register(control, zmq.POLLIN)
    stage.started(classes=len(gate), names=list(gate.names))

    def changed() -> None:
        """The class memory changed: the gate and the memory file follow."""
        nonlocal version
        version += 1
        send(publish, snapshot(gate, version))
        if g.memory:
            save_gate(gate, g.memory)

    def cluster_now(answer: bool = False) -> None:
        """One discovery round; `answer`: the gate waits for the classes, so they go out changed or not."""
        nonlocal new_rows, last_run
        out = discover(gate, buffer, rules, g.alpha)
        new_rows, last_run = 0, time.monotonic()
        if not out:
            if answer:
                send(publish, snapshot(gate, version))
            return
        changed()
        for absorbed, into in out.merged:
            stage.emit("class_merged", **{"class": into}, merged=absorbed, size=int(gate.sizes[gate.names.index(into)]))
        for type_, names in (("class_discovered", out.new), ("class_updated", out.grown)):
            for name in names:
                i = gate.names.index(name)
                stage.emit(type_, **{"class": name}, size=int(gate.sizes[i]), radius=float(gate.radii[i]),
                           set=int(gate.set_ids[i]), buffered=len(buffer))
        if crops_dir is not None:
            for name, thumbs in out.thumbs.items():
                save_examples(crops_dir / name, thumbs, s.examples)

    msg = None
    while not isinstance(msg, EndOfStream):
        ready = dict(poller.poll(200))
        if control in ready:  # rename / merge / delete / list from `owd classes`
            reply, event = handle(control.recv(), gate, g.alpha, s.max_members, crops_dir)
            control.send_json(reply)
            if event is not None:
                changed()
                stage.emit(event.pop("type"), **event)
        msg = inbox.recv(0) if inbox.sock in ready else None
        if not ready and stage.drained:
            msg = EndOfStream("", 0, "stopped")  # supervised: told to stop and nothing left
        if isinstance(msg, UnseenBatch):
            dim = gate.centroids.shape[1] if len(gate) else buffer.dim
            if dim is not None and msg.embeddings.shape[1] != dim:
                inbox.reject(f"unseen embeddings of dim {msg.embeddings.shape[1]}, this run's are {dim}")
            else:
                buffer.add(msg.embeddings, msg.track, msg.examples())
                new_rows += len(msg)
            if msg.round:  # answered even when its rows were refused: the gate waits for it
                if done_rounds.get(msg.source) == msg.index:  # the gate asks again: answer, do not rerun
                    send(publish, snapshot(gate, version))
                else:
                    done_rounds[msg.source] = msg.index
                    cluster_now(answer=True)
                continue
        if isinstance(msg, EndOfStream) or (not by_frames and new_rows >= s.min_new
                                            and time.monotonic() - last_run >= s.period_s):
            cluster_now()
    if g.memory:
        save_gate(gate, g.memory)
    stage.emit("stage_stopped", classes=len(gate), buffered=len(buffer), rejected=inbox.rejected)
    stage.forward_end(stage.events, msg)  # after our last event: an unsupervised sink closes the log on it
    return 0
