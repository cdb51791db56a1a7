"""Open-world evaluation on a labeled ImageFolder: the pipeline's gate and label-free clustering, scored as in SKZC."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from evaluation.baselines import kmeans_silhouette, oracle_kmeans
from evaluation.metrics import UNKNOWN, from_rows, harmonic
from evaluation.plots import line_plot
from models.discovery import DiscoveryRules, discover
from models.unseen import UnseenBuffer
from models.registry import EMBEDDERS, ModelError
from models.sddc import RADIUS_POOL, Gate, normalize
from owd.errors import OwdError
from stages.config import ConfigError, load
from stream.sources import IMAGE_SUFFIXES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"


class EvalError(OwdError):
    """Input the evaluator cannot use; the message says what to do. The CLI prints it and exits 2."""


def scan(root: Path, limit: int = 0) -> tuple[list[Path], np.ndarray]:
    """Image paths under root/<class>/ (sorted; the first `limit` per class, 0 = all) and their class names."""
    if not root.is_dir():
        raise EvalError(f"--data {root} is not a directory; pass an ImageFolder root (DIR/<class>/*.png|jpg)")
    paths, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        files = files[:limit] if limit > 0 else files
        paths += files
        labels += [folder.name] * len(files)
    if not paths:
        raise EvalError(f"no .png/.jpg images in class folders under {root}; expected DIR/<class>/*.png")
    if len(set(labels)) < 2:
        raise EvalError(f"{root} has images of {len(set(labels))} class; need at least 2 (seen and unseen)")
    return paths, np.asarray(labels, object)


def choose_seen(classes: list[str], names: str | None, fraction: float, seed: int) -> list[str]:
    """The seen classes: the listed names, else round(fraction * classes) drawn with the seed."""
    if names:
        seen = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in seen if n not in classes]
        if unknown:
            raise EvalError(f"--seen names unknown class {unknown[0]!r}; classes: {', '.join(classes)}")
    else:
        if not 0.0 < fraction < 1.0:
            raise EvalError(f"--seen-fraction must lie strictly between 0 and 1, got {fraction}")
        count = int(round(fraction * len(classes)))
        seen = [classes[i] for i in np.random.default_rng([seed, 0]).permutation(len(classes))[:count]]
    if not 0 < len(set(seen)) < len(classes):
        raise EvalError(f"{len(set(seen))} of {len(classes)} classes would be seen; at least one class must be "
                        "seen and one unseen (change --seen or --seen-fraction)")
    return sorted(set(seen))


def split(labels: np.ndarray, seen: list[str], fraction: float, seed: int) -> np.ndarray:
    """(N,) bool, True for images that build the class memory: a seeded `fraction` of each seen class."""
    if not 0.0 < fraction < 1.0:
        raise EvalError(f"--memory-fraction must lie strictly between 0 and 1, got {fraction}")
    rng = np.random.default_rng([seed, 1])
    memory = np.zeros(len(labels), bool)
    for name in seen:
        rows = rng.permutation(np.flatnonzero(labels == name))
        memory[rows[:max(1, int(round(fraction * len(rows))))]] = True
    return memory


def embed_cached(keys: list[str], load, make_embedder, cache: Path, save_every: int = 4096) -> np.ndarray:
    """(N, D) float32 raw embeddings of the images load(i) -> (H, W, 3) uint8, one per key; rows whose
    key is in the .npz cache are reused, new ones are added to it (saved every `save_every` rows)."""
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            known = dict(zip(z["paths"].tolist(), z["embeddings"]))
    missing = [i for i, k in enumerate(keys) if k not in known]

    def save() -> None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, paths=np.array(list(known), dtype=np.str_), embeddings=np.stack(list(known.values())))
        tmp.replace(cache)
    if missing:
        embedder = make_embedder()
        for start in range(0, len(missing), 256):
            chunk = missing[start:start + 256]
            for i, row in zip(chunk, embedder.embed([load(i) for i in chunk])):
                known[keys[i]] = row
            done = min(start + 256, len(missing))
            print(f"embedded {done}/{len(missing)}", file=sys.stderr)
            if done % save_every < 256 and done < len(missing):
                save()
        save()
    return np.stack([known[k] for k in keys]).astype(np.float32)


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise EvalError(f"cannot read image {path}; remove it or replace it with a valid PNG/JPEG")
    return image


def build_gate(x: np.ndarray, labels: np.ndarray, memory: np.ndarray, seen: list[str], alpha: float,
               set_size: int, pool: float = RADIUS_POOL, centre: bool = True) -> Gate:
    """The class memory, one seen class per seen class name, from its memory images, centred on them as
    the gallery does (gate.centre). x: (N, D) normalized."""
    gate = Gate.empty(x.shape[1], set_size)
    gate.pool = pool
    for name in seen:
        gate.add_members(name, x[memory & (labels == name)], alpha)
    if centre:
        gate.centre_on_seen(alpha)
    return gate


def classify(x, labels, memory, seen, alpha, set_size, pool=RADIUS_POOL, centre=True) -> tuple[Gate, np.ndarray, np.ndarray, np.ndarray]:
    """The gate built from the memory images; per test image (T,) its class index (-1 = unseen),
    predicted name (a seen class or UNKNOWN) and distance."""
    gate = build_gate(x, labels, memory, seen, alpha, set_size, pool, centre)
    index, distance = gate.classify(x[~memory])
    return gate, index, np.array([gate.names[i] if i >= 0 else UNKNOWN for i in index], object), distance


def run(x: np.ndarray, labels: np.ndarray, memory: np.ndarray, seen: list[str], alpha: float, set_size: int,
        rules: DiscoveryRules, pool: float = RADIUS_POOL, centre: bool = True) -> dict:
    """Gate, then label-free clustering of what it flags, over the test images (~memory). x: (N, D) normalized.
    Returns per test image (T,) arrays: pred (class or UNKNOWN), distance, cluster (the discovered class
    discover assigned it to, None = none), plus the names of the classes discovery created and grew."""
    gate, index, pred, distance = classify(x, labels, memory, seen, alpha, set_size, pool, centre)
    test = x[~memory]
    flagged = np.flatnonzero(index < 0)
    clusters = np.full(len(test), None, object)
    new, grown = [], []
    if len(flagged):  # all at once, each image on a track of its own
        buffer = UnseenBuffer(len(flagged))
        ids = buffer.add(test[flagged], np.arange(len(flagged), dtype=np.int64))
        out = discover(gate, buffer, rules, alpha)
        new, grown, alias = list(out.new), list(out.grown), dict(out.merged)
        where = {int(i): int(f) for i, f in zip(ids, flagged) if i >= 0}
        for name, rows in out.assigned.items():
            while name in alias:
                name = alias[name]
            if name not in seen:
                clusters[[where[int(i)] for i in rows]] = name
    return {"pred": pred, "distance": distance, "cluster": clusters, "new": new, "grown": grown}


def sweeps(x, labels, memory, seen, alpha, set_size, cluster, pool=RADIUS_POOL, centre=True) -> dict:
    """Paper Figs. 6-7 (Sacc, Uacc, H vs alpha; gate only) and Fig. 8 (vs classes per embedding set)."""
    test_seen = np.isin(labels[~memory], seen)
    out = {"alpha": [], "set_size": []}
    for a in np.round(np.linspace(0, 1, 21), 2):
        pred = classify(x, labels, memory, seen, float(a), set_size, pool, centre)[2]
        out["alpha"].append({"alpha": float(a), **_accuracies(pred, labels[~memory], test_seen)})
    for s in range(1, 11):
        r = run(x, labels, memory, seen, alpha, s, cluster, pool, centre)
        none = [None] * len(test_seen)
        rows = _rows(labels[~memory], test_seen, r, {"oracle": none, "kmeans": none, "oracle_all": none})
        t1 = from_rows(rows, seen)["task1"]
        out["set_size"].append({"set_size": s, **_accuracies(r["pred"], labels[~memory], test_seen),
                                "nmi": t1["nmi"], "acc": t1["acc"], "clusters": t1["clusters"]})
    return out


def _accuracies(pred, true, seen_mask) -> dict:
    sacc = float(np.mean(pred[seen_mask] == true[seen_mask])) if seen_mask.any() else 0.0
    uacc = float(np.mean(pred[~seen_mask] == UNKNOWN)) if (~seen_mask).any() else 0.0
    return {"sacc": sacc, "uacc": uacc, "h": harmonic(sacc, uacc)}


def _rows(true, seen_mask, result, baselines: dict[str, np.ndarray], paths=None) -> list[dict]:
    """Per test image records; baselines: name -> (T,) cluster per test image, None where not clustered."""
    return [{"path": str(paths[i]) if paths is not None else str(i), "true": str(true[i]),
             "pred": str(result["pred"][i]), "seen": bool(seen_mask[i]), "cluster": result["cluster"][i],
             **{k: None if v[i] is None else int(v[i]) for k, v in baselines.items()},
             "distance": float(d) if np.isfinite(d := result["distance"][i]) else None} for i in range(len(true))]


def baselines(x: np.ndarray, true: np.ndarray, groups: dict[str, np.ndarray], seed: int,
              silhouette: str) -> dict[str, np.ndarray]:
    """name -> cluster per row of x (None outside its group): k-means told the true k of each boolean
    group, and on group `silhouette` also the label-free k-means (k by silhouette) as "kmeans"."""
    out = {}
    for name, mask in groups.items():
        col = np.full(len(x), None, object)
        col[mask] = oracle_kmeans(x[mask], len(set(true[mask])), seed)
        out[name] = col
        if name == silhouette:
            col = np.full(len(x), None, object)
            col[mask] = kmeans_silhouette(x[mask], seed)
            out["kmeans"] = col
    return out


def parse_args(argv, prog: str = "evaluate.py"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--data", required=True, help="ImageFolder root: DIR/<class>/*.png|jpg")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--seen", help="comma-separated seen class names")
    who.add_argument("--seen-fraction", type=float, help="draw this fraction of the classes as seen (with --seed)")
    p.add_argument("--memory-fraction", type=float, default=0.5, help="of each seen class's images, to build memory")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline YAML whose embed/gate/cluster settings "
                   "are evaluated (default: configs/default.yaml); the flags below override it")
    p.add_argument("--embedder")
    p.add_argument("--weights", help="embedder weights (needed for the dino_* embedders offline)")
    p.add_argument("--input-size", type=int, help="embedder input size in pixels")
    p.add_argument("--alpha", type=float)
    p.add_argument("--set-size", type=int, help="classes per embedding set")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config setting, e.g. --set cluster.min_tracks=2 (repeatable)")
    p.add_argument("--stream", action="store_true", help="replay the test images as a stream of tracked objects")
    p.add_argument("--every", type=int, default=150, help="--stream: cluster after every N tracks shown")
    p.add_argument("--linger", type=float, default=0.075, help="--stream: share of objects shown on 3-20 broken tracks")
    p.add_argument("--view-cache", help="--stream: cache of view embeddings (default: beside --cache)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-per-class", type=int, default=0, help="first N images (sorted) of each class")
    p.add_argument("--json", required=True, help="metrics file to write")
    p.add_argument("--predictions", required=True, help="JSONL of per-test-image predictions to write")
    p.add_argument("--plots", help="folder for the alpha and set-size sweep PNGs")
    p.add_argument("--cache", help="embedding cache .npz (default: beside --json, named by embedder and size)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, embedder=None, prog: str = "evaluate.py") -> int:
    """embedder: an object with .embed(crops) -> (N, D), used instead of the registry (tests inject one)."""
    args = parse_args(argv, prog)
    try:
        return evaluate(args, embedder)
    except (EvalError, ModelError, ConfigError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2


def evaluate(args, embedder=None) -> int:
    started = time.monotonic()
    settings = load(args.config or None, dict(_override(o) for o in args.set))
    alpha = settings.gate.alpha if args.alpha is None else args.alpha
    set_size = settings.gate.set_size if args.set_size is None else args.set_size
    if not 0.0 <= alpha <= 1.0 or set_size < 1:
        raise EvalError(f"--alpha must lie in [0, 1] and --set-size be >= 1, got {alpha} and {set_size}")
    if args.every < 1 or not 0.0 <= args.linger <= 1.0:
        raise EvalError(f"--every must be >= 1 and --linger lie in [0, 1], got {args.every} and {args.linger}")
    rules = DiscoveryRules.from_settings(settings.cluster)
    name = args.embedder or settings.embed.model
    options = dict(settings.embed.options if name == settings.embed.model else {})
    if args.input_size:
        options["input_size"] = args.input_size
    weights = args.weights or (settings.embed.weights if name == settings.embed.model else None)

    paths, labels = scan(Path(args.data), args.limit_per_class)
    classes = sorted(set(labels))
    seen = choose_seen(classes, args.seen, args.seen_fraction or 0.0, args.seed)
    memory = split(labels, seen, args.memory_fraction, args.seed)
    tag = "-".join([name, str(options.get("input_size", "default"))] + ([Path(weights).stem] if weights else []))
    tag = re.sub(r"[^\w.-]", "_", tag)
    cache = Path(args.cache) if args.cache else Path(args.json).parent / f"embeddings-{tag}.npz"
    make = (lambda: embedder) if embedder is not None else (
        lambda: EMBEDDERS.create(name, weights=weights, device=settings.embed.device, **options))
    keys = [str(p.resolve()) for p in paths]
    x = normalize(embed_cached(keys, lambda i: _read(paths[i]), make, cache))
    embedded = time.monotonic()

    test = np.flatnonzero(~memory)
    true, test_paths = labels[test], [str(paths[i]) for i in test]
    test_seen = np.isin(true, seen)
    pool, centre = settings.gate.radius_pool, settings.gate.centre
    metrics = {"embedder": name, "weights": weights, "options": options, "alpha": alpha, "set_size": set_size,
               "radius_pool": pool, "centre": centre,
               "cluster": dataclasses.asdict(settings.cluster), "seed": args.seed,
               "data": str(args.data),
               "seen_classes": seen, "unseen_classes": [c for c in classes if c not in seen],
               "memory_fraction": args.memory_fraction, "n_memory": int(memory.sum()), "n_test": len(test)}
    if args.stream:
        from evaluation.replay import stream
        views = Path(args.view_cache) if args.view_cache else cache.parent / f"views-{tag}.npz"
        gate = build_gate(x, labels, memory, seen, alpha, set_size, pool, centre)
        rows, found = stream(x, test, true, seen, gate, rules, settings, alpha, args.seed, args.every, args.linger,
                             lambda i: _read(paths[i]), keys, lambda k, load: embed_cached(k, load, make, views))
        for r, p in zip(rows, test_paths):
            r["path"] = p
        metrics.update(found)
    else:
        result = run(x, labels, memory, seen, alpha, set_size, rules, pool, centre)
        flagged = ~test_seen & (result["pred"] == UNKNOWN)
        groups = {"oracle": flagged, "oracle_all": ~test_seen}
        rows = _rows(true, test_seen, result, baselines(x[test], true, groups, args.seed, "oracle"), test_paths)
        metrics.update({"discovered": len(result["new"]), "grown_seen": result["grown"], **from_rows(rows, seen)})
    if args.plots and not args.stream:
        metrics["sweeps"] = sweeps(x, labels, memory, seen, alpha, set_size, rules, pool, centre)
        title = f"{name} {options['input_size']}px" if "input_size" in options else name
        plot(metrics["sweeps"], Path(args.plots), title)
    metrics["seconds"] = {"embed": round(embedded - started, 2), "total": round(time.monotonic() - started, 2)}
    Path(args.predictions).parent.mkdir(parents=True, exist_ok=True)
    Path(args.predictions).write_text("".join(json.dumps(r) + "\n" for r in rows))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(metrics, indent=1) + "\n")
    print(summary(name, alpha, metrics))
    return 0


def _override(text: str) -> tuple[str, object]:
    key, eq, value = text.partition("=")
    if not eq or "." not in key:
        raise EvalError(f"--set takes SECTION.KEY=VALUE (e.g. cluster.min_tracks=2), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def summary(name: str, alpha: float, m: dict) -> str:
    t1, t2 = m["task1"], m["task2"]
    line = (f"{name} alpha={alpha}: Sacc {t2['sacc']:.3f} Uacc {t2['uacc']:.3f} H {t2['h']:.3f} | NMI/ACC/ARI ours "
            f"{t1['nmi']:.3f}/{t1['acc']:.3f}/{t1['ari']:.3f} oracle {t1['nmi_oracle']:.3f}/{t1['acc_oracle']:.3f}/"
            f"{t1['ari_oracle']:.3f} k-means(silhouette, k={t1['k_kmeans_silhouette']}) "
            f"{t1['nmi_kmeans_silhouette']:.3f}/{t1['acc_kmeans_silhouette']:.3f}/{t1['ari_kmeans_silhouette']:.3f}"
            f" | {t1['clusters']} clusters, coverage {t1['coverage']:.2f}, n {t1['n']}")
    if "classes_made" in m:
        line += (f" | classes made {m['classes_made']} for {m['classes_real']} unseen, single-object "
                 f"{m['single_object_classes']} ({m['lingering']} lingering objects)")
    return line


def plot(s: dict, folder: Path, name: str) -> None:
    a = s["alpha"]
    line_plot(folder / "alpha_sweep.png", [r["alpha"] for r in a], {k: [r[k] for r in a] for k in ("h", "sacc", "uacc")},
              "alpha", f"{name}: gate accuracy vs alpha")
    z = s["set_size"]
    line_plot(folder / "set_size_sweep.png", [r["set_size"] for r in z],
              {k: [r[k] for r in z] for k in ("h", "sacc", "uacc", "nmi", "acc")}, "classes per embedding set",
              f"{name}: accuracy vs set size")


if __name__ == "__main__":
    sys.exit(main())
