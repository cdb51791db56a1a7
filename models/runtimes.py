"""Inference runtimes for exported networks: OpenVINO and ONNX Runtime sessions, the export cache, and `auto`'s timed choice."""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from models import weights
from models.registry import ModelError

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime", "opencv")
_PACKAGES = {"torch": "torch", "openvino": "openvino", "onnxruntime": "onnxruntime", "opencv": "cv2"}
_DISTS = {"torch": "torch", "openvino": "openvino", "onnxruntime": "onnxruntime", "opencv": "opencv-python"}


def installed(runtime: str) -> bool:
    return importlib.util.find_spec(_PACKAGES[runtime]) is not None


def version(runtime: str) -> str:
    try:
        return importlib.metadata.version(_DISTS[runtime])
    except importlib.metadata.PackageNotFoundError:
        return "?"


def cache_dir() -> Path:
    """Exported networks and auto's measurements, beside the other cached weights (OWD_CACHE, ~/.cache/owd)."""
    return weights.cache_dir("runtimes")


def cpu_model() -> str:
    """The CPU's model name: a measurement made on one CPU says nothing about another."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


def tensors_digest(module) -> str:
    """Digest of a torch module's parameters and buffers: the cache key of its weights, whatever file
    (or seed) they came from."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """write(tmp) then rename: stages of several runs may fill the same cache at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_onnx(network, example, path: Path, dynamic: dict[str, dict[int, str]]) -> Path:
    """network (torch module) traced on example inputs into ONNX at path, once; dynamic: axes per input/output name."""
    if path.is_file():
        return path
    import torch

    names = [n for n in dynamic if n.startswith("x")]
    outputs = [n for n in dynamic if not n.startswith("x")]
    network = network.eval().requires_grad_(False)

    def write(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(network, example, str(tmp), input_names=names, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=17, dynamo=False)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        return atomic_write(path, write)


def open_session(runtime: str, path: Path, threads: int) -> Callable[..., list[np.ndarray]]:
    """A compiled network on the CPU: call(*inputs) -> outputs, in the network's order.
    threads: intra-op threads (0 = the runtime's default, all cores)."""
    if not installed(runtime):
        raise ModelError(f"runtime {runtime!r} is not installed: pip install {_DISTS[runtime]}")
    if runtime == "openvino":
        import openvino as ov
        # CACHE_DIR: OpenVINO keeps the compiled blob; compiling the SSD took 2 s idle and 2 minutes at load 35.
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "CACHE_DIR": str(cache_dir() / "openvino")}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        request = compiled.create_infer_request()

        def run_ov(*xs: np.ndarray) -> list[np.ndarray]:
            result = request.infer([np.ascontiguousarray(x) for x in xs])
            return [np.array(result[o]) for o in compiled.outputs]  # copies: the request reuses its buffers
        return run_ov
    if runtime == "onnxruntime":
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = [i.name for i in session.get_inputs()]
        return lambda *xs: session.run(None, {n: np.ascontiguousarray(x) for n, x in zip(inputs, xs)})
    raise ModelError(f"runtime {runtime!r} cannot run an exported network here")


def measure(calls: dict[str, Callable[[], object]], rounds: int = 5) -> dict[str, float]:
    """ms of one call of each candidate: the fastest of `rounds`, the candidates taking turns so that other
    processes on a shared machine slow them alike (the minimum is what the CPU can do)."""
    for call in calls.values():
        call()  # warm-up: lazy allocations, first-call compilation
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    return {name: 1000 * min(t) for name, t in times.items()}


def _record(key: str, names) -> Path:
    return cache_dir() / f"auto-{digest(key, cpu_model(), *(f'{r}={version(r)}' for r in sorted(names)))}.json"


def cached_choice(key: str, names: list[str]) -> str | None:
    """auto's earlier choice among `names` for key (model, weights, input size, threads; runtime versions
    and CPU are added here), or None: then build them all and `choose`."""
    if len(names) == 1:
        return names[0]
    try:
        choice = json.loads(_record(key, names).read_text())["runtime"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return choice if choice in names else None


def choose(key: str, candidates: dict[str, Callable[[], object]]) -> str:
    """auto: the candidate runtime with the lowest measured ms, kept in the cache for `cached_choice`.
    candidates: runtime -> one inference."""
    ms = measure(candidates)
    choice = min(ms, key=ms.get)
    record = {"runtime": choice, "ms": ms, "key": key, "cpu": cpu_model(), "load": os.getloadavg()[0]}
    atomic_write(_record(key, list(candidates)), lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    return choice


def choices(model: str) -> tuple[str, ...]:
    """The runtimes that can run registered model `model`, its reference runtime first. The SSD's TF graph
    is read by OpenCV or OpenVINO (ONNX Runtime would need a TF->ONNX converter); torch models export to ONNX."""
    return ("opencv", "openvino") if model.startswith("ssd_") else ("torch", "openvino", "onnxruntime")


def check(model: str, runtime: str, device: str) -> None:
    """ModelError unless `runtime` can run `model` on `device` (non-torch runtimes: CPU only)."""
    if runtime not in RUNTIMES:
        raise ModelError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if runtime != "auto" and runtime not in choices(model):
        raise ModelError(f"{model} cannot run on {runtime}; it runs on {', '.join(choices(model))} (or auto)")
    if runtime not in ("auto", "torch") and device != "cpu":
        raise ModelError(f"runtime {runtime} runs on the CPU; set runtime: torch (or auto) for device {device}")
