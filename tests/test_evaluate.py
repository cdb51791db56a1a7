"""The evaluator and its metrics against hand-computed answers, its input errors, and the Fashion-MNIST converter."""
from __future__ import annotations

import gzip
import json
import math
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from evaluation import evaluate
from evaluation import replay as eval_stream
from conftest import ROOT
from evaluation.baselines import kmeans_silhouette
from evaluation.metrics import UNKNOWN, clustering, from_predictions, hungarian_acc, stream_from_rows, task1, task2
from models.sddc import normalize
from tools import fashion_mnist

COLOURS = {"a": (0, 0, 200), "b": (0, 200, 0), "c": (200, 0, 0), "d": (0, 200, 200)}  # BGR, class -> colour


class ColourEmbedder:
    """Embeds a solid-colour image as the one-hot of its colour (16-d). Colours of classes c and d get
    a jitter seeded by pixel (0, 0), so their images are distinct but cluster tightly; a and b images
    are exact one-hots, so a seen class's test images sit exactly on its centroid."""
    dim = 16

    def embed(self, crops):
        out = np.zeros((len(crops), self.dim), np.float32)
        for row, crop in zip(out, crops):
            colour = tuple(int(v) for v in crop[1, 1])
            k = list(COLOURS.values()).index(colour)
            row[k] = 1.0
            if k >= 2:
                row[4:] += 0.1 * np.random.default_rng(int(crop[0, 0, 0])).normal(size=self.dim - 4)
        return out


def make_folder(root, per_class=12, odd=True):
    """root/<a|b|c|d>/NN.png solid colour images; with `odd`, one image of unseen class d has a's colour."""
    n = 0
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = np.empty((8, 8, 3), np.uint8)
            image[:] = COLOURS["a"] if odd and name == "d" and i == 0 else colour
            image[0, 0] = (n, 0, 0)  # image id: seeds the jitter
            n += 1
            cv2.imwrite(str(root / name / f"{i:02d}.png"), image)
    return root


def run_eval(tmp_path, *extra, data=None):
    data = data or make_folder(tmp_path / "data")
    argv = ["--data", str(data), "--seen", "a,b", "--alpha", "1.0", "--set", "cluster.k=5",  # 23 rows: k 15 joins all
            "--json", str(tmp_path / "m.json"), "--predictions", str(tmp_path / "p.jsonl"), *extra]
    return evaluate.main(argv, embedder=ColourEmbedder())


def test_evaluator_on_known_folder_matches_hand_computed_metrics(tmp_path):
    assert run_eval(tmp_path) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    t2, t1, t1_all = m["task2"], m["task1"], m["task1_all"]
    # Test set: 6 a + 6 b (the other halves build the memory) + 12 c + 12 d; one d image looks like a.
    assert (m["n_memory"], m["n_test"], m["unseen_classes"]) == (12, 36, ["c", "d"])
    pc = t2["per_class"]
    assert pc["a"]["precision"] == pytest.approx(6 / 7) and pc["a"]["recall"] == 1.0
    assert pc["a"]["f1"] == pytest.approx(12 / 13)
    assert pc["b"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 6}
    assert pc[UNKNOWN]["precision"] == 1.0 and pc[UNKNOWN]["recall"] == pytest.approx(23 / 24)
    assert t2["f1_macro"] == pytest.approx((12 / 13 + 1 + 46 / 47) / 3)
    assert (t2["sacc"], t2["uacc"], t2["h"]) == (1.0, pytest.approx(23 / 24), pytest.approx(46 / 47))
    # Task 1 over the 23 unseen images the gate flagged (12 c, 11 d): discover makes one class of each.
    assert (t1["clusters"], t1["n"], t1["coverage"], m["discovered"]) == (2, 23, 1.0, 2)
    assert (t1["nmi"], t1["acc"], t1["ari"]) == (pytest.approx(1.0), 1.0, pytest.approx(1.0))
    assert (t1["nmi_oracle"], t1["acc_oracle"], t1["nmi_kmeans_silhouette"], t1["k_kmeans_silhouette"]) == \
        (pytest.approx(1.0), 1.0, pytest.approx(1.0), 2)
    h_true = -sum(p * math.log(p) for p in (12 / 23, 11 / 23))
    assert t1["nmi_floor"] == pytest.approx(2 * h_true / (h_true + math.log(23)))  # 23 singletons
    # task1_all over all 24 unseen images: the a-looking d image is in no cluster (a singleton).
    assert (t1_all["clusters"], t1_all["n"], t1_all["coverage"]) == (2, 24, pytest.approx(23 / 24))
    assert t1_all["acc"] == pytest.approx(23 / 24) and t1_all["acc_covered"] == 1.0
    h_clusters = -sum(p * math.log(p) for p in (12 / 24, 11 / 24, 1 / 24))
    assert t1_all["nmi"] == pytest.approx(2 * math.log(2) / (math.log(2) + h_clusters))
    expected = 132 * 121 / 276  # pairs: same class 2*C(12,2), same cluster C(12,2)+C(11,2), total C(24,2)
    assert t1_all["ari"] == pytest.approx((121 - expected) / ((132 + 121) / 2 - expected))
    assert (t1_all["nmi_oracle"], t1_all["acc_oracle"], t1_all["ari_oracle"]) == (1.0, 1.0, 1.0)
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    odd = [r for r in rows if r["true"] == "d" and r["pred"] == "a"]
    assert len(odd) == 1 and odd[0]["cluster"] is None and odd[0]["seen"] is False and odd[0]["distance"] == 0.0
    assert {r["cluster"] for r in rows if r["true"] == "c"} not in ({None}, {r["cluster"] for r in rows if r["true"] == "d"})


def test_predictions_recompute_to_the_json_metrics(tmp_path):
    assert run_eval(tmp_path, "--alpha", "0.5") == 0
    m = json.loads((tmp_path / "m.json").read_text())
    again = from_predictions(tmp_path / "p.jsonl", m["seen_classes"])
    assert again == {"task1": m["task1"], "task1_all": m["task1_all"], "task2": m["task2"]}
    # ... and the check can fail: one changed prediction changes the metrics.
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["pred"] = "b" if first["pred"] != "b" else UNKNOWN
    (tmp_path / "p.jsonl").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    assert from_predictions(tmp_path / "p.jsonl", m["seen_classes"])["task2"] != m["task2"]


def test_plots_and_sweeps(tmp_path):
    assert run_eval(tmp_path, "--plots", str(tmp_path / "plots")) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert [r["alpha"] for r in m["sweeps"]["alpha"]][::10] == [0.0, 0.5, 1.0]
    assert [r["set_size"] for r in m["sweeps"]["set_size"]] == list(range(1, 11))
    assert all(r["sacc"] == 1.0 for r in m["sweeps"]["alpha"])  # a and b test images sit on their centroids
    for name in ("alpha_sweep.png", "set_size_sweep.png"):
        image = cv2.imread(str(tmp_path / "plots" / name))
        assert image is not None and image.shape[2] == 3 and (image < 128).any()


def test_embedding_cache_is_reused(tmp_path):
    assert run_eval(tmp_path) == 0
    first = json.loads((tmp_path / "m.json").read_text())

    class Refuses:
        def embed(self, crops):
            raise AssertionError("cached embeddings should have been reused")
    argv = ["--data", str(tmp_path / "data"), "--seen", "a,b", "--alpha", "1.0",
            "--json", str(tmp_path / "m.json"), "--predictions", str(tmp_path / "p.jsonl")]
    assert evaluate.main(argv, embedder=Refuses()) == 0
    assert json.loads((tmp_path / "m.json").read_text())["task2"] == first["task2"]


@pytest.mark.parametrize("case, args, message", [
    ("missing", ["--seen", "a"], "is not a directory"),
    ("empty", ["--seen", "a"], "no .png/.jpg images"),
    ("one_class", ["--seen-fraction", "0.5"], "need at least 2"),
    ("ok", ["--seen", "a,zebra"], "unknown class 'zebra'"),
    ("ok", ["--seen-fraction", "1.5"], "--seen-fraction must lie"),
    ("ok", ["--seen-fraction", "0.05"], "0 of 4 classes would be seen"),
    ("ok", ["--seen", "a,b,c,d"], "4 of 4 classes would be seen"),
    ("ok", ["--seen", "a", "--memory-fraction", "1"], "--memory-fraction must lie"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case, args, message):
    data = tmp_path / "data"
    if case == "empty":
        (data / "a").mkdir(parents=True)
    elif case == "one_class":
        make_folder(data)
        for name in "bcd":
            for f in (data / name).iterdir():
                f.unlink()
    elif case == "ok":
        make_folder(data)
    argv = ["--data", str(data), *args, "--json", str(tmp_path / "m.json"), "--predictions", str(tmp_path / "p.jsonl")]
    assert evaluate.main(argv, embedder=ColourEmbedder()) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "m.json").exists()


def test_cli_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--data", str(tmp_path / "nowhere"),
                           "--seen", "a", "--json", "m.json", "--predictions", "p.jsonl"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("evaluate: --data")


@pytest.mark.parametrize("true, pred, seen, expected", [
    ([], [], [], {"sacc": 0.0, "uacc": 0.0, "h": 0.0, "f1_macro": 0.0}),
    # a: 2 right, 1 called unknown; unseen x: 1 flagged, 1 called a.
    (["a", "a", "a", "x", "x"], ["a", "a", UNKNOWN, UNKNOWN, "a"], [1, 1, 1, 0, 0],
     {"sacc": 2 / 3, "uacc": 1 / 2, "h": 4 / 7, "precision_macro": (2 / 3 + 1 / 2) / 2,
      "recall_macro": (2 / 3 + 1 / 2) / 2, "f1_macro": (2 / 3 + 1 / 2) / 2}),
])
def test_task2_by_hand(true, pred, seen, expected):
    got = task2(true, pred, [bool(s) for s in seen], ["a"])
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_clustering_scores_by_hand():
    # Perfect up to renaming; then a labeling with one class split in two and nothing unclustered.
    assert clustering(["x", "x", "y", "y"], [5, 5, 2, 2]) == {"nmi": 1.0, "acc": 1.0, "ari": 1.0}
    assert hungarian_acc(np.array(["x", "x", "x", "y"]), np.array([0, 0, 1, 1])) == 0.75
    got = clustering(["x", "x", "y", "y"], [0, None, 1, None])  # two singletons
    assert got["acc"] == 0.5 and got["ari"] == pytest.approx(0.0)
    assert clustering([], []) == {"nmi": 0.0, "acc": 0.0, "ari": 0.0}
    t = task1(["x", "x", "y"], [0, 0, None], [1, 1, 0])
    assert (t["clusters"], t["coverage"], t["acc_covered"], t["acc_oracle"]) == (1, pytest.approx(2 / 3), 1.0, 1.0)


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_conversion_of_synthetic_idx(tmp_path):
    labels = np.array([3, 0, 3, 9, 3, 0], np.uint8)
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, 2051)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, 2049)
    written = fashion_mnist.convert(tmp_path, tmp_path / "out", "train", per_class=2)
    assert written["Dress"] == 2 and written["T-shirt_top"] == 2 and written["Ankle_boot"] == 1
    assert sum(written.values()) == 5 and len(list((tmp_path / "out").iterdir())) == 10
    png = cv2.imread(str(tmp_path / "out" / "Dress" / "train-00002.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(png, images[2])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, 2051)  # wrong magic
    with pytest.raises(fashion_mnist.DataError, match="magic 2049"):
        fashion_mnist.convert(tmp_path, tmp_path / "out2")


def test_fashion_mnist_missing_package_says_what_to_install(tmp_path, capsys):
    assert fashion_mnist.main(["--out", str(tmp_path / "o"), "--source", str(tmp_path / "none")]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_fashion_mnist_package_test_split():
    if not (fashion_mnist.PACKAGE_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("needs the Debian package dataset-fashion-mnist")
    labels = fashion_mnist.read_idx(fashion_mnist.PACKAGE_DIR / "t10k-labels-idx1-ubyte.gz", 2049)
    assert np.bincount(labels).tolist() == [1000] * 10


# --- stream replay (evaluate.py --stream) and the label-free k-means baseline ---

class TinyEmbedder:
    """A real (if tiny) image embedder: the image area-resized to 4x4, BGR, flattened (48-d). Views of
    one image stay near-identical; images of one class share their base colour."""

    def embed(self, crops):
        return np.stack([cv2.resize(c, (4, 4), interpolation=cv2.INTER_AREA).astype(np.float32).ravel() for c in crops])


def textured_folder(root, per_class=20, seed=0):
    """root/<a|b|c|d>/NN.png: 32x32 class colour plus a random 4x4 blocky texture per image."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            texture = cv2.resize(rng.integers(0, 60, (4, 4, 3)).astype(np.uint8), (32, 32),
                                 interpolation=cv2.INTER_NEAREST)
            image = np.clip(np.array(colour, np.int32) + texture, 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{i:02d}.png"), image)
    return root


def test_plan_shows_every_object_and_lingering_ones_on_broken_tracks():
    plan = eval_stream.make_plan(40, seed=3, linger=0.1, window=10)
    tracks = plan.tracks()
    assert len(plan.lingering) == 4 and len(set(plan.lingering.tolist())) == 4
    assert sorted(set(plan.obj.tolist())) == list(range(40))
    assert len({int(plan.track[a]) for a, _ in tracks}) == len(tracks)  # a track id is never reused
    for a, b in tracks:
        assert 3 <= b - a <= 8 and len(set(plan.obj[a:b].tolist())) == 1
        assert len(set(plan.view[a:b].tolist())) == b - a  # distinct views within a track
    per_object = {o: len(np.unique(plan.track[plan.obj == o])) for o in range(40)}
    stay = set(plan.lingering.tolist())
    assert all(4 <= per_object[o] <= 21 for o in stay)  # first appearance + 3..20 new tracks
    assert all(n == 1 for o, n in per_object.items() if o not in stay)
    order = [int(plan.obj[a]) for a, _ in tracks]
    firsts = [o for i, o in enumerate(order) if o not in order[:i]]
    for o in stay:  # reappearances come within the window of first appearances after the first
        last = max(i for i, q in enumerate(order) if q == o)
        assert sum(1 for q in firsts[firsts.index(o):] if q in order[:last]) <= 11
    again = eval_stream.make_plan(40, seed=3, linger=0.1, window=10)
    assert np.array_equal(again.obj, plan.obj) and np.array_equal(again.view, plan.view)
    assert not np.array_equal(eval_stream.make_plan(40, seed=4, linger=0.1, window=10).obj, plan.obj)


def test_views_are_real_small_perturbations_fixed_by_image_and_index():
    image = cv2.resize(np.random.default_rng(0).integers(0, 255, (8, 8, 3)).astype(np.uint8), (32, 32))
    p = eval_stream.view_params("/x/a.png", 2)
    assert np.array_equal(p, eval_stream.view_params("/x/a.png", 2))
    assert not np.array_equal(p, eval_stream.view_params("/x/a.png", 3))
    view = eval_stream.perturb(image, p)
    assert view.shape == image.shape and view.dtype == np.uint8 and not np.array_equal(view, image)
    assert np.abs(view.astype(int) - image).mean() < 40  # near-identical, not a different picture
    assert np.array_equal(eval_stream.perturb(image, np.array([0.0, 0.0, 1.0, 1.0])), image)


def test_stream_replay_metrics_recompute_from_predictions(tmp_path):
    data = textured_folder(tmp_path / "data")
    argv = ["--data", str(data), "--seen", "a,b", "--stream", "--every", "10", "--linger", "0.1",
            "--json", str(tmp_path / "m.json"), "--predictions", str(tmp_path / "p.jsonl")]
    assert evaluate.main(argv, embedder=TinyEmbedder()) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    # 10 test images each of a and b, 20 each of c and d: 60 objects, 6 of them lingering.
    assert (m["objects"], m["lingering"], m["classes_real"]) == (60, 6, 2)
    assert m["task1"]["n"] == 40 and sum(r["lingering"] for r in rows) == 6
    assert m["frames"] == m["stream"]["frames"] == sum(r["frames"] for r in rows)
    assert m["tracks"] == m["stream"]["tracks"] == 60 + sum(r["tracks"] - 1 for r in rows if r["lingering"])
    assert m["stream"]["discover_calls"] == m["tracks"] // 10 + 1
    assert m["classes_made"] == len(m["classes"]) and not set(m["classes"]) & {"a", "b"}
    again = from_predictions(tmp_path / "p.jsonl", m["seen_classes"], made=m["classes"])
    assert again == {k: m[k] for k in again}
    assert {r["cluster"] for r in rows} - {None} <= set(m["classes"])
    assert m["task1"]["nmi_oracle"] == 1.0 and m["task1"]["k_kmeans_silhouette"] == 2
    # ... and the recomputation can fail: one object moved to another class changes Task 1.
    unseen = next(i for i, r in enumerate(rows) if not r["seen"])
    rows[unseen]["cluster"] = "elsewhere"
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert from_predictions(tmp_path / "p.jsonl", m["seen_classes"], made=m["classes"])["task1"] != m["task1"]
    # The views were cached: a second run embeds nothing.

    class Refuses:
        def embed(self, crops):
            raise AssertionError("cached view embeddings should have been reused")
    assert evaluate.main(argv, embedder=Refuses()) == 0


def test_single_object_classes_and_lingering_counted_by_hand():
    def row(true, seen, assigned, lingering=False, cluster=None):
        return {"true": true, "seen": seen, "pred": "unknown", "cluster": cluster, "assigned": assigned,
                "lingering": lingering, "tracks": 9 if lingering else 1, "frames": 30 if lingering else 5,
                "oracle": None if seen else 0, "kmeans": None if seen else 0}
    rows = [row("c", False, ["n1"], cluster="n1"), row("c", False, ["n1"], cluster="n1"),
            row("d", False, ["n2"], lingering=True, cluster="n2"),   # n2: one lingering object alone
            row("d", False, ["n3", "n1"], cluster="n3"),              # n3: one (ordinary) object alone
            row("d", False, [], lingering=True), row("a", True, [])]
    got = stream_from_rows(rows, ["n1", "n2", "n3"], ["a"])
    assert (got["classes_made"], got["classes_real"], got["classes_ratio"]) == (3, 2, 1.5)
    assert (got["single_object_classes"], got["single_object_names"]) == (2, ["n2", "n3"])
    assert (got["lingering"], got["lingering_own_class"]) == (2, 1)
    assert (got["objects"], got["tracks"], got["frames"], got["task1"]["n"]) == (6, 22, 80, 5)
    assert got["task1"]["coverage"] == pytest.approx(4 / 5)


def test_kmeans_silhouette_finds_the_number_of_separated_blobs():
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:3] * 5
    truth = np.repeat(np.arange(3), 40)
    x = normalize(centres[truth] + rng.normal(0, 0.3, (120, 8)).astype(np.float32))
    labels = kmeans_silhouette(x, seed=0)
    assert len(set(labels.tolist())) == 3 and clustering(truth, labels.tolist())["ari"] == pytest.approx(1.0)
    assert set(kmeans_silhouette(x[:9], seed=0).tolist()) == {0}  # N/5 < 2: one cluster
    two = normalize(centres[truth % 2] + rng.normal(0, 0.3, (120, 8)).astype(np.float32))
    assert len(set(kmeans_silhouette(two, seed=0).tolist())) == 2
