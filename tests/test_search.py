"""The updated box predictor: window scoring over a dense map, the class search, and the embed stage's plumbing."""
from __future__ import annotations

import numpy as np
import pytest

from models.proposals import box_iou
from models.search import ClassSearch, DenseMap, dense_map, integral, pool_boxes, score_windows
from models.sddc import Gate, normalize
from stages.config import ConfigError, load
from stages.embed import SEARCH_LABEL as SEARCH, Search, embed
from stages.gate import label
from stream.messages import ClassUpdate, Frame, FrameDetections
from stream.topology import LINKS


def synthetic_map(rng: np.random.Generator, box_cells: tuple[int, int, int, int], c: int = 16,
                  h: int = 20, w: int = 30) -> np.ndarray:
    """(C, h, w) features: a background of one direction plus noise, and an object (cells x1, y1, x2, y2)
    of another direction."""
    fmap = np.abs(rng.normal(0, 0.3, (c, h, w))).astype(np.float32)
    fmap[0] += 1.0  # background
    x1, y1, x2, y2 = box_cells
    fmap[:, y1:y2, x1:x2] = np.abs(rng.normal(0, 0.3, (c, y2 - y1, x2 - x1)))
    fmap[5, y1:y2, x1:x2] += 1.0  # object
    return fmap


def test_the_only_window_matching_a_centroid_is_the_object():
    rng = np.random.default_rng(0)
    fmap = synthetic_map(rng, (10, 6, 14, 9))  # 4 x 3 cells at stride 16: pixels (160, 96, 224, 144)
    centroid = np.eye(16, dtype=np.float32)[5:6]
    # shapes near the object's size, as ClassSearch asks for (a window inside the object would match as well)
    win = score_windows(integral(fmap), 16.0, (320, 480), centroid, [(64, 48), (64, 64), (96, 64)])
    best = win.xyxy[np.argmax(win.cosine[:, 0])]
    assert best.tolist() == [160, 96, 224, 144]
    assert win.cosine.shape == (len(win.xyxy), 1) and win.cosine.max() > 0.7
    # every other window of the object's shape scores lower
    same = (win.xyxy[:, 2] - win.xyxy[:, 0] == 64) & (win.xyxy[:, 3] - win.xyxy[:, 1] == 48)
    assert np.sort(win.cosine[same, 0])[-2] < win.cosine.max() - 0.05


def test_pooled_boxes_are_the_mean_of_their_cells():
    rng = np.random.default_rng(1)
    fmap = rng.normal(size=(4, 6, 8)).astype(np.float32)
    v = pool_boxes(integral(fmap), 10.0, np.array([[20, 10, 50, 40]], np.float32))[0]
    expected = fmap[:, 1:4, 2:5].mean(axis=(1, 2))
    assert np.allclose(v, expected / np.linalg.norm(expected), atol=1e-5)


def test_class_search_finds_a_learnt_object_at_a_new_place_and_forgets_removed_classes():
    rng = np.random.default_rng(2)
    finder = ClassSearch(per_class=2, limit=4)
    seen_at = DenseMap(synthetic_map(rng, (3, 3, 7, 6)), 16.0, (320, 480))
    finder.learn(seen_at, np.array([[48, 48, 112, 96], [200, 200, 240, 240]], np.float32), ["thing", None])
    assert len(finder) == 1
    found = finder.propose(DenseMap(synthetic_map(rng, (20, 12, 24, 15)), 16.0, (320, 480)))
    assert 1 <= len(found) <= 2
    assert box_iou(found[:1], np.array([[320, 192, 384, 240]])).item() == pytest.approx(1.0)
    finder.forget_except(set())
    assert len(finder) == 0 and len(finder.propose(seen_at)) == 0


class Fake:
    """An embedder whose crop embedding and dense map agree: a crop's mean colour, and the frame's own
    colours at stride 16 (so a window's pooled map is its crop's embedding)."""
    dim, stride = 3, 16

    def embed(self, crops):
        return np.array([c.reshape(-1, 3).mean(axis=0) + 1.0 for c in crops], np.float32).reshape(-1, 3)

    def feature_map(self, image):
        h, w = image.shape[:2]
        cells = image[:h // 16 * 16, :w // 16 * 16].reshape(h // 16, 16, w // 16, 16, 3).mean(axis=(1, 3))
        return np.ascontiguousarray(cells.transpose(2, 0, 1) + 1.0, np.float32)  # (3, h/16, w/16)


def still_scene(x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((160, 240, 3), (40, 40, 40), np.uint8)
    image[y:y + 48, x:x + 32] = (20, 200, 60)  # the object
    return image, np.array([[x, y, x + 32, y + 48]], np.float32)


def detections(index: int, image: np.ndarray, boxes: np.ndarray) -> FrameDetections:
    n = len(boxes)
    return FrameDetections(Frame("cam", index, 0.0, image), boxes.reshape(-1, 4).astype(np.float32),
                           np.full(n, 0.9, np.float32), ("thing",) * n)


def test_a_still_object_of_a_discovered_class_gets_a_labelled_box_only_through_the_search():
    model = Fake()
    first, box = still_scene(32, 16)
    members = normalize(model.embed([first[16:64, 32:64], first[17:64, 32:63], first[12:68, 28:68]]))  # one loose
    gate = Gate.empty(set_size=7)
    gate.add_members("novel-1", members, 1.0, discovered=True)
    search = Search(model, Gate.empty(set_size=7), ClassSearch())
    assert search.update(ClassUpdate(1, tuple(gate.names), gate.centroids, gate.radii, gate.sizes,
                                     gate.set_ids), model.dim) is None
    embed(model, [detections(0, first, box)], search)  # the detector's box of the class: the search learns it
    still, truth = still_scene(160, 96)  # the object at a new place where no detector box is
    for predictor in (None, search):
        out = embed(model, [detections(1, still, np.zeros((0, 4)))], predictor)[0]
        labeled, _ = label(gate, out)
        hits = [lab for lab, b in zip(labeled.labels, labeled.xyxy) if box_iou(b, truth).item() >= 0.5]
        if predictor is None:
            assert len(out) == 0 and hits == []
        else:
            assert hits == ["novel-1"]
            assert set(labeled.origins) == {"proposal"} and set(labeled.det_labels) == {"search"}
            assert (out.scores == 0).all()  # a searched window starts no track of its own


def test_search_refuses_updates_of_another_dim_and_embedders_without_a_map():
    search = Search(Fake(), Gate.empty(set_size=7), ClassSearch())
    bad = ClassUpdate(1, ("a",), np.ones((1, 5), np.float32), np.ones(1, np.float32), np.ones(1, np.int64),
                      np.zeros(1, np.int64))
    assert "dim 5" in search.update(bad, 3)
    centred = ClassUpdate(2, ("a",), np.ones((1, 3), np.float32), np.ones(1, np.float32), np.ones(1, np.int64),
                          np.zeros(1, np.int64), center=np.full(3, 0.5, np.float32))
    assert search.update(centred, 3) is None and search.gate.center.tolist() == [0.5] * 3  # measured as the gate does
    with pytest.raises(ConfigError, match="embed.search"):
        Search(object(), Gate.empty(), ClassSearch())


def test_embed_subscribes_to_classes_and_its_settings_are_checked(tmp_path):
    assert "embed" in LINKS["classes"].connectors
    cfg = tmp_path / "c.yaml"
    cfg.write_text("embed: {search: true, search_per_class: 2}\n")
    s = load(str(cfg), {})
    assert s.embed.search and s.embed.search_per_class == 2 and s.embed.search_limit == 30
    with pytest.raises(ConfigError, match="search_per_class"):
        load(str(cfg), {"embed.search_per_class": 0})


def test_efficientnet_lite0_gives_a_stride_16_map_and_the_stage_finds_it_behind_any_runtime():
    from models.compiled import RuntimeEmbedder
    from models.registry import EMBEDDERS
    from stages.embed import build_search

    model = EMBEDDERS.create("efficientnet_lite0", input_size=128, precision="fp32")
    fmap = model.feature_map(np.zeros((96, 128, 3), np.uint8))
    assert fmap.shape == (112, 6, 8) and model.stride == 16 and np.isfinite(fmap).all()

    class Stage:  # what build_search reads of a StageProcess
        settings = load(None, {"embed.search": True})
        opened = []

        def socket(self, name):
            self.opened.append(name)
            return None
    for wrapped in (model, RuntimeEmbedder(model, session=None, runtime="onnxruntime")):
        search, classes = build_search(Stage(), wrapped)
        assert search.network is model and classes.name == "embed/classes"
    assert Stage.opened == ["classes", "classes"]
    Stage.settings = load(None, {})
    assert build_search(Stage(), model) == (None, None)


def test_the_embed_key_may_subscribe_to_classes_over_curve(tmp_path):
    from stages.config import Settings, TransportSettings
    from stages.keys import KEY_NAMES, socket_curve
    from stream.security import PUBLIC_SUFFIX, load_public, make_keys
    from stream.topology import ENDPOINT_NAMES

    make_keys(tmp_path / "k", KEY_NAMES)
    endpoints = {n: f"tcp://127.0.0.1:{5000 + i}" for i, n in enumerate(ENDPOINT_NAMES)}  # never opened
    settings = Settings(transport=TransportSettings(endpoints=endpoints, keys=str(tmp_path / "k")))
    public = lambda name: load_public(tmp_path / "k" / "public" / f"{name}{PUBLIC_SUFFIX}")  # noqa: E731
    assert socket_curve(settings, "embed", "classes", False).server == public("cluster")
    admitted = socket_curve(settings, "cluster", "classes", True).clients
    assert public("embed") in admitted and public("gate") in admitted and public("detect") not in admitted


def test_refine_moves_a_window_near_a_class_towards_its_centroid_and_leaves_far_ones():
    from models.search import refine
    truth = np.array([100.0, 60.0, 160.0, 140.0])

    def embed(boxes):  # the closer a box to the truth, the closer its embedding to the class's centroid
        iou = box_iou(boxes, truth[None])[:, 0]
        return normalize(np.stack([iou, 1 - iou, np.zeros_like(iou)], axis=1) + 1e-3)
    centroid, radius = np.array([[1.0, 0.0, 0.0]], np.float32), np.array([0.5], np.float32)
    start = np.array([[110, 66, 170, 146], [300, 10, 340, 50]], np.float32)  # near the object; on background
    boxes, x = refine(start, embed(start), embed, lambda v: v, centroid, radius, near=2.0, rounds=3)
    assert box_iou(boxes[:1], truth[None]).item() > box_iou(start[:1], truth[None]).item() + 0.1
    assert boxes[1].tolist() == start[1].tolist()  # too far from every class: not worth crops
    assert np.allclose(x, embed(boxes), atol=1e-6)


def test_no_window_over_a_box_the_frame_already_has_unless_an_unseen_guess():
    model = Fake()
    first, box = still_scene(32, 16)
    gate = Gate.empty(set_size=7)
    gate.add_members("novel-1", normalize(model.embed([first[16:64, 32:64], first[12:68, 28:68]])), 1.0)
    search = Search(model, gate, ClassSearch())
    embed(model, [detections(0, first, box)], search)
    still, truth = still_scene(160, 96)
    background = np.array([[0, 0, 40, 40]], np.float32)
    for origin, added in (("motion", False), ("proposal", True)):  # a tracked region; an unseen low-score guess
        msg = FrameDetections(Frame("cam", 1, 0.0, still), np.vstack([truth + [0, 0, 24, 0], background]),
                              np.full(2, 0.3, np.float32), ("object", "object"), origins=(origin, origin))
        out = embed(model, [msg], search)[0]
        windows = out.xyxy[[lab == "search" for lab in out.det_labels]]
        assert (box_iou(windows, truth).max(initial=0) >= 0.5) == added, origin


@pytest.mark.parametrize("accept", ["reach", "lda"])
def test_the_map_vouches_only_for_windows_as_typical_of_a_class_as_its_own_boxes(accept):
    rng = np.random.default_rng(3)
    finder = ClassSearch(per_class=3, limit=6, accept=accept)
    for x in (3, 9, 15, 21):  # four boxes of the class, each in a frame of its own
        finder.learn(DenseMap(synthetic_map(rng, (x, 3, x + 4, 6)), 16.0, (320, 480)),
                     np.array([[x * 16, 48, x * 16 + 64, 96]], np.float32), ["thing"])
    found, names, vouched = finder.candidates(DenseMap(synthetic_map(rng, (20, 12, 24, 15)), 16.0, (320, 480)))
    on = box_iou(found, np.array([[320, 192, 384, 240]], np.float32))[:, 0] >= 0.5
    assert names == ["thing"] * len(found) and on.sum() == 1 and len(found) > 1
    assert vouched[on].all() and not vouched[~on].any()  # background windows are less like it than any member
    assert finder.reach("thing") < 1.0
    few = ClassSearch()
    few.learn(DenseMap(synthetic_map(rng, (3, 3, 7, 6)), 16.0, (320, 480)), np.array([[48, 48, 112, 96]]), ["one"])
    assert few.reach("one") == np.inf  # one box is its own mean: no reach to vouch with


def test_the_gate_sees_a_vouched_window_as_its_class_only_when_its_crop_is_nearest_that_class():
    from models.search import VOUCHED, vouch
    from stream.messages import FrameEmbeddings
    gate = Gate.empty(set_size=7)
    gate.add("A", normalize(np.array([[1.0, 0.0, 0.0]]))[0], 0.1, 10, discovered=True)
    gate.add("B", normalize(np.array([[0.0, 1.0, 0.0]]))[0], 0.1, 10, discovered=True)
    near_a = normalize(np.array([[1.0, 0.5, 0.0]], np.float32))  # nearest A, outside its radius (0.46 > 0.1)
    x = np.vstack([near_a] * 4 + [normalize(np.array([[1.0, 0.02, 0.0]], np.float32))])
    labels = (VOUCHED + "A", SEARCH, VOUCHED + "B", "thing", SEARCH)
    index = vouch(gate.centroids, gate.space(x), labels, gate.names, gate.classify(x)[0])
    assert index.tolist() == [0, -1, -1, -1, 0]  # the last one is inside A's radius: the paper's gate already
    msg = FrameEmbeddings(Frame("cam", 0, 0.0, np.zeros((64, 64, 3), np.uint8)),
                          np.tile(np.array([[0, 0, 20, 20]], np.float32), (5, 1)) + np.arange(5)[:, None] * 8,
                          np.zeros(5, np.float32), labels, x, origins=("proposal",) * 3 + ("detector", "proposal"))
    labeled, _ = label(gate, msg)
    assert list(labeled.labels) == ["A", "unseen", "A"]  # the detector box stays, unseen; the unvouched go


def test_a_forged_vouch_from_the_wire_cannot_name_a_class_the_box_is_not_nearest_nor_vouch_for_a_non_window():
    from models.search import VOUCHED
    from stream.messages import FrameEmbeddings
    gate = Gate.empty(set_size=7)
    gate.add("A", normalize(np.array([[1.0, 0.0, 0.0]]))[0], 0.1, 10, discovered=True)
    gate.add("B", normalize(np.array([[0.0, 1.0, 0.0]]))[0], 0.1, 10, discovered=True)
    x = normalize(np.array([[1.0, 0.5, 0.0], [1.0, 0.5, 0.0], [0.1, 0.5, 1.0], [1.0, 0.5, 0.0]], np.float32))
    labels = (VOUCHED + "B", VOUCHED + "A", VOUCHED + "A", VOUCHED + "A")  # all forged as vouched
    origins = ("proposal", "detector", "proposal", "motion")
    msg = FrameEmbeddings(Frame("cam", 0, 0.0, np.zeros((64, 64, 3), np.uint8)),
                          np.array([[0, 0, 20, 20], [30, 0, 50, 20], [0, 30, 20, 50], [30, 30, 50, 50]], np.float32),
                          np.array([0.0, 0.9, 0.0, 0.5], np.float32), labels, x, origins=origins)
    labeled, _ = label(gate, msg)
    # nearest A but forged as B: dropped; the detector and motion boxes are not windows: unseen, never A;
    # the third is nearest B (outside its radius), forged as A: dropped
    assert "B" not in list(labeled.labels) and "A" not in list(labeled.labels)
    forged = FrameEmbeddings(msg.frame, msg.xyxy, msg.scores, (VOUCHED + "A",) * 4, x, origins=("proposal",) * 4)
    assert list(label(gate, forged)[0].labels).count("A") == 3  # what the same label on windows nearest A does
    # origins () mean every box is the detector's (the messages' convention): no window, nothing vouched
    from models.search import vouch
    unseen = gate.classify(x)[0]
    kept = vouch(gate.centroids, gate.space(x), (VOUCHED + "A",) * 4, gate.names, unseen, ())
    assert kept.tolist() == unseen.tolist()


def test_the_lda_model_separates_a_class_from_background_that_the_centroid_cosine_confuses():
    from models.search import Background
    rng = np.random.default_rng(5)
    c = 16
    base = np.zeros(c)
    base[3] = 2.0
    nuisance = np.eye(c)[0]  # background context: swings a lot, in every window and in the class's own
    bg = base + rng.normal(0, 1.0, (2000, 1)) * nuisance + rng.normal(0, 0.05, (2000, c))
    cls = base + 0.5 * np.eye(c)[1] + rng.normal(0, 1.0, (40, 1)) * nuisance + rng.normal(0, 0.05, (40, c))
    model = Background(decay=1.0, shrink=0.01)
    for chunk in np.array_split(bg, 4):  # over frames
        model.add(chunk)
    w, b = model.direction(cls.mean(axis=0))
    lda_bg, lda_cls = bg @ w + b, cls @ w + b
    assert lda_cls.min() > lda_bg.max()  # every class member above every background window
    centre = cls.mean(axis=0) / np.linalg.norm(cls.mean(axis=0))
    cos_bg = (bg / np.linalg.norm(bg, axis=1, keepdims=True)) @ centre
    cos_cls = (cls / np.linalg.norm(cls, axis=1, keepdims=True)) @ centre
    assert (cos_cls < cos_bg.max()).mean() > 0.5  # the cosine ranks background above most members


def test_a_still_object_outside_the_radius_is_found_through_a_vouched_window_and_only_it():
    model = Fake()
    gate = Gate.empty(set_size=7)
    loose = [still_scene(32, 16)[0][0:80, 16:80]]  # the class's crops were loose: the exact view lies outside
    gate.add("novel-1", normalize(model.embed(loose))[0], 1e-3, 10, discovered=True)
    search = Search(model, gate, ClassSearch())
    for x in (32, 64, 96, 128):  # four frames where a box of the class came through
        image, box = still_scene(x, 16)
        search.finder.learn(dense_map(model, image), box, ["novel-1"])
    still, truth = still_scene(160, 96)
    out = embed(model, [detections(5, still, np.zeros((0, 4)))], search)[0]
    assert any(lab.startswith("search:") for lab in out.det_labels)
    labeled, _ = label(gate, out)
    assert [box_iou(b, truth).item() >= 0.5 for b in labeled.xyxy] == [True] and list(labeled.labels) == ["novel-1"]
    radius_only = out.__class__(out.frame, out.xyxy, out.scores, (SEARCH,) * len(out), out.embeddings,
                                origins=out.origins)
    assert len(label(gate, radius_only)[0]) == 0  # the paper's gate alone: not one box


def test_knn_vouches_for_a_window_among_its_class_members_not_one_nearer_the_background():
    from models.reference import Reference
    rng = np.random.default_rng(7)

    def around(v, n):
        return normalize(np.asarray(v, np.float32) + rng.normal(0, 0.03, (n, 3)).astype(np.float32))
    ref = Reference(members=64, background=256)
    ref.learn(np.vstack([around([1, 0, 0], 10), around([0, 1, 0], 10)]), ["A"] * 10 + ["B"] * 10)
    ref.learn(around([0, 0, 1], 2), [None, None])  # boxes of no class are no members
    assert set(ref.members) == {"A", "B"} and len(ref.members["A"]) == 10
    identity = normalize
    assert not ref.vouch(around([1, 0, 0], 1), ["A"], identity).any()  # no background yet: nothing vouched
    ref.add_background(around([0.7, 0, 0.7], 20))  # background that looks a bit like A
    x = normalize(np.array([[0.78, 0.0, 0.62], [0.98, 0.05, 0.1], [0.98, 0.05, 0.1]], np.float32))
    centroids = normalize(np.array([[1, 0, 0], [0, 1, 0]], np.float32))
    assert (x @ centroids.T).argmax(axis=1).tolist() == [0, 0, 0]  # the crops' nearest class is A for all three
    assert ref.vouch(x, ["A", "A", "B"], identity).tolist() == [False, True, False]  # nearer the background; A's
    ref.k = 3
    assert ref.vouch(x, ["A", "A", "B"], identity).tolist() == [False, True, False]
    ref.forget_except({"B"})
    assert not ref.vouch(x, ["A", "A", "A"], identity).any()


def test_knn_judges_in_the_gate_space_its_centre_included():
    from models.reference import Reference
    ref = Reference()
    ref.learn(normalize(np.array([[1.0, 1.0, 0.2]], np.float32)), ["A"])
    ref.add_background(normalize(np.array([[1.0, 1.0, -0.2]], np.float32)))
    x = normalize(np.array([[1.0, 1.0, 0.05]], np.float32))
    gate = Gate.empty(set_size=7)
    assert ref.vouch(x, ["A"], gate.space).tolist() == [True]
    gate.center = normalize(np.array([[1.0, 1.0, 0.12]], np.float32))[0]  # centred, the query lies on the other side
    assert ref.vouch(x, ["A"], gate.space).tolist() == [False]


def test_hard_negatives_lie_on_no_box_nor_a_proposed_window_and_look_like_the_class_first():
    from models.reference import hard_negatives
    rng = np.random.default_rng(11)
    finder = ClassSearch(per_class=2, limit=4)
    fmap = synthetic_map(rng, (3, 3, 7, 6))
    fmap[:, 12:15, 20:24] = fmap[:, 3:6, 3:7]  # an unboxed patch that looks like the object
    dense = DenseMap(fmap, 16.0, (320, 480))
    box = np.array([[48, 48, 112, 96]], np.float32)
    finder.learn(dense, box, ["thing"])
    negs = hard_negatives(finder, dense, box, ["thing"], np.zeros((0, 4)), n=4)
    assert 1 <= len(negs) <= 4 and box_iou(negs, box).max() < 0.3
    patch = np.array([[320, 192, 384, 240]], np.float32)
    assert box_iou(negs[:1], patch).item() >= 0.5  # the most class-like background first
    avoided = hard_negatives(finder, dense, box, ["thing"], patch, n=4)
    assert box_iou(avoided, patch).max() < 0.3  # a window judged on this frame is never learnt on it
    assert len(hard_negatives(finder, dense, box, ["other"], np.zeros((0, 4)))) == 0


def test_the_embed_stage_vouches_for_a_still_object_by_its_crop_and_learns_background_off_its_boxes():
    from models.boxes import crop
    from models.reference import Reference, hard_negatives
    model = Fake()
    gate = Gate.empty(set_size=7)
    loose = [still_scene(32, 16)[0][0:80, 16:80]]  # the class's crops were loose: the exact view lies outside
    gate.add("novel-1", normalize(model.embed(loose))[0], 1e-3, 10, discovered=True)
    search = Search(model, gate, ClassSearch(accept="none"), reference=Reference())
    for x in (32, 64, 96, 128):  # four frames where a box of the class came through: its crop, hard background
        image, box = still_scene(x, 16)
        dense = dense_map(model, image)
        search.finder.learn(dense, box, ["novel-1"])
        search.reference.learn(normalize(model.embed(crop(image, box))), ["novel-1"])
        negatives = hard_negatives(search.finder, dense, box, ["novel-1"], np.zeros((0, 4)))
        search.reference.add_background(normalize(model.embed(crop(image, negatives))))
    still, truth = still_scene(160, 96)
    out = embed(model, [detections(5, still, np.zeros((0, 4)))], search)[0]
    vouched = [b for b, lab in zip(out.xyxy, out.det_labels) if lab == "search:novel-1"]
    assert len(vouched) == 1 and box_iou(vouched[0], truth).item() >= 0.5
    assert len(out) > 1 and len(search.learnt) == 0  # other windows, not vouched; no class learnt here: no background
    labeled, _ = label(gate, out)
    assert list(labeled.labels) == ["novel-1"] and box_iou(labeled.xyxy, truth).item() >= 0.5
    radius_only = out.__class__(out.frame, out.xyxy, out.scores, (SEARCH,) * len(out), out.embeddings,
                                origins=out.origins)
    assert len(label(gate, radius_only)[0]) == 0  # the paper's gate alone: not one box
    # a frame where the class learns (a box inside its radius): background windows off every box are learnt
    gate.add("novel-2", normalize(model.embed([still[96:144, 160:192]]))[0], 0.5, 10, discovered=True)
    before = len(search.reference.background)
    out = embed(model, [detections(6, still, truth)], search)[0]
    assert 1 <= len(search.learnt) <= 4 and box_iou(search.learnt, truth).max() < 0.3
    assert len(search.reference.background) == before + len(search.learnt)
    assert [len(v) for v in search.reference.members.values()] == [4, 1]
