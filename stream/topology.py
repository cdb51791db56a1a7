"""The pipeline's wiring, declared once: for every endpoint, who binds it, who connects, and the socket kinds."""
from __future__ import annotations

from dataclasses import dataclass

import zmq

STAGES = ("capture", "detect", "embed", "gate", "cluster", "sink")  # pipeline order: the order in which a run ends
WORKERS = ("detect", "embed")  # connect on both sides (ventilator / worker / sink): any number of them may join


@dataclass(frozen=True)
class Link:
    binder: str                   # the stable end: a stage, or the supervisor
    bind_kind: int
    connectors: tuple[str, ...]   # who connects (also the only client keys its CURVE domain admits)
    connect_kind: int
    optional: bool = False        # a stage run alone (`--only`) may go without it


LINKS: dict[str, Link] = {
    "frames": Link("capture", zmq.PUSH, ("detect",), zmq.PULL),
    # The gate is the stable middle: it relays detections to whichever embed worker is free (a zmq proxy
    # thread), takes the embeddings back from all of them, and restores each source's frame order.
    "detections": Link("gate", zmq.PULL, ("detect",), zmq.PUSH),
    "to_embed": Link("gate", zmq.PUSH, ("embed",), zmq.PULL),
    "embeddings": Link("gate", zmq.PULL, ("embed",), zmq.PUSH),
    "labeled": Link("sink", zmq.PULL, ("gate",), zmq.PUSH),
    "unseen": Link("cluster", zmq.PULL, ("gate",), zmq.PUSH),
    "classes": Link("cluster", zmq.PUB, ("gate", "embed"), zmq.SUB),  # embed: only with embed.search
    "control": Link("cluster", zmq.REP, ("classes",), zmq.REQ),
    "events": Link("sink", zmq.PULL, ("capture", "detect", "embed", "gate", "cluster", "supervisor"), zmq.PUSH),
    "acks": Link("capture", zmq.PULL, ("sink",), zmq.PUSH, optional=True),  # within one supervised run only
    "stats": Link("supervisor", zmq.PULL, STAGES, zmq.PUSH, optional=True),  # counters for /metrics
}
ENDPOINT_NAMES = tuple(LINKS)


def role(stage: str, endpoint: str) -> tuple[int, bool]:
    """(socket kind, bind?) of `stage`'s end of `endpoint`; KeyError names a stage that has no end there."""
    link = LINKS[endpoint]
    if stage == link.binder:
        return link.bind_kind, True
    if stage in link.connectors:
        return link.connect_kind, False
    raise KeyError(f"{stage} has no end on endpoint {endpoint!r}")
