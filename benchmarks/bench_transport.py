"""What CurveZMQ costs: frames/s and MB/s of 768x576 frames between two processes, ipc vs plain tcp vs CURVE tcp.

    python benchmarks/bench_transport.py [--frames 400] [--hwm 8]

The same Frame messages (our wire format, the size of a vtest.avi frame) go from a PUSH in this process to a
PULL in a child process over each transport; the child reports when it got the last one.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from stages.config import Settings, TransportSettings
from stages.keys import KEY_NAMES, socket_curve
from stream.messages import Frame
from stream.security import Zap, make_keys
from stream.sockets import open_socket, send

SHAPE = (576, 768, 3)


def receive(endpoint: str, settings: Settings | None, n: int, hwm: int, done) -> None:
    ctx = zmq.Context()
    curve = socket_curve(settings, "detect", "frames", False) if settings else None
    sock = open_socket(ctx, zmq.PULL, endpoint, bind=False, hwm=hwm, linger_ms=0, curve=curve)
    for _ in range(n):
        sock.recv_multipart(copy=False)
    done.put(time.perf_counter())
    sock.close()
    ctx.term()


def run(name: str, endpoint: str, settings: Settings | None, n: int, hwm: int) -> float:
    ctx = zmq.Context()
    zap = Zap(ctx) if settings else None
    curve = socket_curve(settings, "capture", "frames", True) if settings else None
    sock = open_socket(ctx, zmq.PUSH, endpoint, bind=True, hwm=hwm, linger_ms=0, curve=curve, zap=zap)
    done = mp.Queue()
    child = mp.Process(target=receive, args=(endpoint, settings, n + 10, hwm, done))
    child.start()
    image = np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8)
    for i in range(10):  # warm-up: connection and handshake
        send(sock, Frame("bench", i, 0.0, image))
    start = time.perf_counter()
    for i in range(n):
        send(sock, Frame("bench", i, 0.0, image))
    elapsed = done.get() - start
    child.join()
    sock.close()
    if zap:
        zap.close()
    ctx.term()
    rate = n / elapsed
    print(f"{name:28s} {rate:8.1f} frames/s  {rate * image.nbytes / 1e6:8.1f} MB/s")
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--hwm", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_keys(Path(tmp) / "keys", KEY_NAMES)
        socket = __import__("socket").socket()
        socket.bind(("127.0.0.1", 0))
        port = socket.getsockname()[1]
        socket.close()
        tcp = f"tcp://127.0.0.1:{port}"
        curve = Settings(transport=TransportSettings(endpoints={"frames": tcp}, keys=str(Path(tmp) / "keys")))
        print(f"{args.frames} frames of {SHAPE[1]}x{SHAPE[0]}x3 uint8, hwm {args.hwm}, one run each")
        base = run("ipc (default)", f"ipc://{tmp}/frames", None, args.frames, args.hwm)
        run("tcp loopback, plain", tcp, None, args.frames, args.hwm)
        ours = run("tcp loopback, CURVE + ZAP", tcp, curve, args.frames, args.hwm)
        print(f"CURVE tcp / ipc: {ours / base:.2f}x; the pipeline's slowest stage runs ~11 frames/s")


if __name__ == "__main__":
    main()
