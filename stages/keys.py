"""CurveZMQ keys of a run: which key pair each stage's tcp socket uses, and `owd keys`, which makes them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stages.config import ConfigError, Settings
from stream.security import PUBLIC_SUFFIX, SECRET_SUFFIX, Curve, load_public, load_secret, make_keys
from stream.topology import LINKS, STAGES

STAGE_KEYS = STAGES
KEY_NAMES = STAGE_KEYS + ("classes", "supervisor")  # the `classes` command (control socket); the supervisor's events
# Who binds each endpoint (its key pair serves it) and who connects (the only client keys its ZAP domain admits):
# a stolen sink key cannot inject frames, a stolen detect key cannot rename classes. From stream/topology.py.
BINDS = {name: link.binder for name, link in LINKS.items()}
CONNECTS = {name: link.connectors for name, link in LINKS.items()}


def socket_curve(settings: Settings, owner: str, endpoint: str, bind: bool) -> Curve | None:
    """The CURVE keys of `owner`'s socket on `endpoint`: None for ipc (a private folder) or for tcp under
    transport.insecure_tcp; ConfigError when a tcp endpoint has no usable keys."""
    t = settings.transport
    if not t.endpoints[endpoint].startswith("tcp://"):
        return None
    if t.keys is None:
        if t.insecure_tcp:
            return None
        raise ConfigError(f"transport.endpoints.{endpoint} is tcp without transport.keys (make them with "
                          f"`owd keys --out DIR`, or set transport.insecure_tcp=true)")
    if endpoint not in BINDS:
        raise ConfigError(f"endpoint {endpoint!r} has no key policy (BINDS/CONNECTS in stages/keys.py)")
    folder = Path(t.keys)
    try:
        public, secret = load_secret(folder / "private" / f"{owner}{SECRET_SUFFIX}")
        if bind:
            clients = frozenset(load_public(folder / "public" / f"{c}{PUBLIC_SUFFIX}") for c in CONNECTS[endpoint])
            return Curve(public, secret, domain=endpoint, clients=clients)
        return Curve(public, secret, server=load_public(folder / "public" / f"{BINDS[endpoint]}{PUBLIC_SUFFIX}"))
    except ValueError as exc:
        raise ConfigError(f"transport.keys: {exc}") from None


def main(argv: list[str], prog: str = "owd keys") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--out", required=True, help="folder for the keys (made owner-only); set transport.keys to it")
    p.add_argument("--names", nargs="+", default=list(KEY_NAMES), choices=KEY_NAMES, metavar="NAME",
                   help=f"key pairs to make (default: all of {', '.join(KEY_NAMES)})")
    args = p.parse_args(argv)
    try:
        written = make_keys(Path(args.out), tuple(args.names))
    except OSError as exc:
        print(f"owd keys: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(f"owd: copy {args.out}/public to every host and to each host only the private/NAME{SECRET_SUFFIX} "
          f"of the stages it runs; set transport.keys={args.out}", file=sys.stderr)
    return 0
