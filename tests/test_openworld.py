"""Class-agnostic proposals and what the gate keeps of them: motion regions, origins, the updated box predictor."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from models.detections import Detections
from models.openworld import TrackAges, explained, feeds, fragments
from models.proposals import MotionProposer, ViewMotion, box_iou, merge
from models.sddc import Gate, normalize
from models.tracks import BoxTracker, LabelVotes
from stages.detect import Proposals, detect
from stages.gate import label
from stages.sink import records
from stream.messages import Frame, FrameDetections, FrameEmbeddings
from stream.wire import decode, encode

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "stream" / "events.schema.json").read_text())


def scene(rng: np.random.Generator, h: int = 240, w: int = 320) -> np.ndarray:
    """A textured still background (smoothed noise), so frame registration has corners to follow."""
    import cv2
    return cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (5, 5), 0)


def square_frames(n: int, moving_view: bool = False, seed: int = 0):
    """A 40 px square crossing a still (or panning) textured view with sensor noise; yields (image, box)."""
    rng = np.random.default_rng(seed)
    bg = scene(rng, 300, 420)
    for t in range(n):
        ox = 3 * t if moving_view else 0  # a panning camera: the whole view shifts 3 px per frame
        img = bg[30:270, ox % 90:ox % 90 + 320].copy()
        x, y = 20 + 4 * t, 100
        img[y:y + 40, x:x + 40] = (255, 255, 255)
        img = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
        yield img, np.array([x, y, x + 40, y + 40], np.float32)


def test_motion_box_follows_a_moving_square():
    proposer = MotionProposer("auto", min_box=12)
    hits = []
    for t, (img, box) in enumerate(square_frames(50)):
        boxes, scores = proposer(img)
        if t >= 30:  # settled view and learnt background
            hits.append(len(boxes) > 0 and box_iou(box, boxes).max() >= 0.5)
            assert len(boxes) <= 2  # the background gives (next to) nothing
    assert np.mean(hits) >= 0.9


def test_no_motion_boxes_while_the_view_moves_or_when_off():
    panning, off = MotionProposer("auto"), MotionProposer("off")
    for img, _ in square_frames(40, moving_view=True):
        assert len(panning(img)[0]) == 0
        assert len(off(img)[0]) == 0
    assert panning.view.still_for == 0 and panning.view.shift > 1.0


def test_view_motion_of_unrelated_images_is_not_still():
    rng = np.random.default_rng(1)
    view = ViewMotion(settle=2)
    assert not any(view.update(scene(rng)[:, :, 0], 1.0) for _ in range(6))


def test_merge_ranks_detector_over_motion_over_low_scores():
    confident = np.array([[0, 0, 50, 100]], np.float32)
    low = np.array([[2, 2, 50, 98], [200, 0, 240, 40], [201, 1, 240, 41]], np.float32)
    motion = np.array([[0, 0, 60, 110], [300, 300, 340, 340], [198, 0, 240, 42]], np.float32)
    li, mi = merge(confident, low, np.array([0.3, 0.2, 0.1], np.float32), motion,
                   np.ones(3, np.float32), iou=0.5)
    assert mi.tolist() == [1, 2]  # the first holds the detection: that is the person moving
    assert li.tolist() == []      # one under the detection, two under the motion box at (200, 0)


class Scripted:
    """A detector returning given boxes, as the real one would below the stage's score threshold."""
    class_names = ("person", "kite")

    def __init__(self, result: Detections):
        self.result = result

    def detect(self, images):
        return [self.result] * len(images)


def test_detect_emits_low_score_proposals_with_their_origin():
    det = Detections(np.array([[0, 0, 40, 80], [2, 2, 40, 80], [100, 100, 150, 150]], np.float32),
                     np.array([0.9, 0.2, 0.15], np.float32), np.array([0, 1, 1]))
    frame = Frame("s", 0, 1.0, np.zeros((200, 200, 3), np.uint8))
    today = detect(Scripted(det), [frame], 0.4, 12)[0]
    assert today.origins == ("detector",)
    out = detect(Scripted(det), [frame], 0.4, 12, proposals=Proposals(0.1, 0.5, 20, "off", 100, 12))[0]
    assert out.origins == ("detector", "proposal") and out.det_labels == ("person", "kite")
    assert out.xyxy[1].tolist() == [100, 100, 150, 150]
    assert decode(encode(out)).origins == out.origins


def test_origins_are_checked_and_default_to_detector():
    base = dict(frame=Frame("s", 0, 1.0, np.zeros((8, 8, 3), np.uint8)),
                xyxy=np.zeros((1, 4), np.float32), scores=np.ones(1, np.float32), det_labels=("a",))
    assert FrameDetections(**base).origins == ("detector",)
    with pytest.raises(ValueError, match="origins"):
        FrameDetections(**base, origins=("guess",))
    with pytest.raises(ValueError, match="rows"):
        FrameDetections(**base, origins=("motion", "motion"))


def embedded(index: int, boxes, vectors, origins, image: np.ndarray | None = None) -> FrameEmbeddings:
    """One frame's embedded boxes; the image (black unless given) shows a white object in each box, as the
    camera would where a motion region is (the gate tells a moving thing from a ghost by the pixels)."""
    if image is None:
        image = np.zeros((240, 320, 3), np.uint8)
        for x0, y0, x1, y1 in np.array(boxes, int).reshape(-1, 4):
            image[y0:y1, x0:x1] = 255
    return FrameEmbeddings(Frame("s", index, 1.0, image), np.array(boxes, np.float32),
                           np.full(len(boxes), 0.2, np.float32), ("object",) * len(boxes),
                           np.array(vectors, np.float32).reshape(len(boxes), -1), origins=tuple(origins))


def a_discovered_class(dim: int = 8) -> Gate:
    rng = np.random.default_rng(0)
    gate = Gate.empty(dim)
    centre = np.eye(dim, dtype=np.float32)[0]
    gate.add_members("novel-1", normalize(centre + 0.05 * rng.normal(size=(20, dim))), 0.75, discovered=True)
    return gate


def test_a_proposal_inside_a_discovered_class_becomes_a_labelled_detection():
    gate = a_discovered_class()
    inside, outside = np.eye(8)[0], np.eye(8)[3]
    labeled, unseen = label(gate, embedded(0, [[10, 10, 50, 50], [100, 100, 140, 140]], [inside, outside],
                                           ["proposal", "proposal"]), BoxTracker(), LabelVotes(), 32, TrackAges(), 5)
    assert labeled.labels == ("novel-1",) and labeled.seen.tolist() == [True]
    assert labeled.origins == ("proposal",) and labeled.xyxy[0].tolist() == [10, 10, 50, 50]
    assert len(unseen) == 0  # the unexplained one is dropped, not clustered


def test_a_flicker_never_reaches_clustering_but_a_persisting_track_does():
    gate, tracker, votes, ages = Gate.empty(8), BoxTracker(), LabelVotes(), TrackAges()
    clustered, kept = [], []
    far = np.eye(8)[5]
    for i in range(12):
        boxes, vectors, origins = [[20 + 2 * i, 20, 80 + 2 * i, 80]], [far], ["motion"]
        if i == 6:  # one frame only: a flicker somewhere else
            boxes, vectors, origins = boxes + [[200, 150, 260, 210]], vectors + [np.eye(8)[6]], origins + ["motion"]
        labeled, unseen = label(gate, embedded(i, boxes, vectors, origins), tracker, votes, 32, ages, 5)
        kept.append(len(labeled))
        clustered += [tuple(e) for e in unseen.embeddings]
    assert kept[:4] == [0, 0, 0, 0] and kept[-1] == 1  # kept once its track is 5 frames old
    assert kept[6] == 1  # the flicker was dropped
    assert clustered and all(np.argmax(e) == 5 for e in clustered)


def test_explained_keeps_detector_boxes_always_and_motion_only_on_a_settled_track():
    origins = ("detector", "proposal", "proposal", "motion", "motion", "motion")
    seen = np.array([False, False, True, True, False, False])
    ages, steady = np.array([0, 9, 0, 0, 9, 9]), np.array([0, 3, 0, 0, 3, 1])
    keep = explained(origins, seen, ages, 5, steady, 3)
    # an unseen proposal stays a guess even on a settled track; a seen motion box on no track is a
    # flicker; the last motion box is old but its box jumps about
    assert keep.tolist() == [True, False, True, False, True, False]


def test_track_ages_count_steady_frames_and_restart_on_a_jump():
    ages = TrackAges()
    runs = [ages.observe(np.array([7]), np.array([box], np.float32))[1][0]
            for box in ([0, 0, 40, 40], [2, 0, 42, 40], [4, 1, 44, 41], [4, 1, 24, 41], [5, 1, 25, 41])]
    assert runs == [1, 2, 3, 1, 2]  # halved in width: a fragment, not the same view
    age, steady = ages.observe(np.array([-1, 7]), np.zeros((2, 4), np.float32))
    assert age.tolist() == [0, 6] and steady.tolist() == [0, 1]


def test_fragments_inside_a_larger_kept_box_go_but_a_proposal_never_makes_one():
    xyxy = np.array([[0, 0, 100, 100], [10, 10, 40, 60], [200, 0, 300, 100], [210, 10, 240, 60],
                     [400, 0, 440, 40], [390, 0, 500, 100]], np.float32)
    origins = ("motion", "motion", "proposal", "motion", "proposal", "detector")
    keep = np.ones(6, bool)
    assert fragments(xyxy, origins, keep).tolist() == [False, True, False, False, True, False]
    keep[0] = False  # a container the gate dropped makes no fragment
    assert not fragments(xyxy, origins, keep)[1]


def test_only_steady_proposal_views_feed_clustering():
    assert feeds(("detector", "motion", "motion", "proposal"), np.array([0, 2, 3, 5]), 3).tolist() == \
        [True, False, True, True]


def test_origin_validates_in_the_schema():
    msg = embedded(0, [[1, 1, 30, 30]], [np.eye(8)[0]], ["motion"])
    from stream.messages import LabeledFrame
    lab = LabeledFrame(Frame(msg.source, 0, 1.0, msg.image), msg.xyxy, msg.scores, msg.det_labels, ("unseen",),
                       np.zeros(1, bool), np.full(1, np.inf, np.float32), np.full(1, 3, np.int64), origins=("motion",))
    frame_rec, det_rec = records(lab, 2.0)
    assert det_rec["origin"] == "motion"
    det_rec["distance"] = None  # as the event log writes inf
    det_rec["run"] = "run-1"  # the event log stamps every record with its run id
    jsonschema.validate(det_rec, SCHEMA)
    for bad in ("guess", None):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**det_rec, "origin": bad}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in det_rec.items() if k != "origin"}, SCHEMA)


def test_the_gate_clusters_a_steady_motion_track_but_not_its_jumping_fragment():
    gate, tracker, votes, ages = Gate.empty(8), BoxTracker(), LabelVotes(), TrackAges()
    clustered, kept = [], []
    for i in range(10):
        whole, part = [20 + 2 * i, 20, 100 + 2 * i, 100], [30 + 2 * i, 30 + 20 * (i % 2), 60 + 2 * i, 70 + 20 * (i % 2)]
        labeled, unseen = label(gate, embedded(i, [whole, part], [np.eye(8)[5], np.eye(8)[6]], ["motion", "motion"]),
                                tracker, votes, 32, ages, 5, 3)
        kept.append(len(labeled))
        clustered += [int(np.argmax(e)) for e in unseen.embeddings]
    assert kept[-1] == 1 and max(kept) == 1  # the part inside the whole is never a box of its own
    assert clustered and set(clustered) == {5}


def test_a_track_has_moved_once_where_it_began_looks_different_and_stays_so():
    ages, rng = TrackAges(), np.random.default_rng(0)
    ground = scene(rng).astype(np.float32)
    boxes = np.array([[20, 20, 80, 80], [200, 150, 260, 210], [100, 150, 160, 210]], np.float32)
    which = np.array([True, True, False])  # the third is no motion box: never asked
    out = []
    for i in range(12):
        image = ground + rng.normal(0, 3, ground.shape)  # sensor noise everywhere
        x = 20 + 3 * min(i, 8)  # a square crossing its first place, then standing
        image[20:80, x:x + 60] = 255
        boxes[0, [0, 2]] = x, x + 60
        out.append(ages.moved(np.array([1, 2, 3]), boxes, np.clip(image, 0, 255).astype(np.uint8), which).tolist())
    assert out[0] == [False, False, False]  # a track's first frame: nothing to compare with
    assert out[1] == [False, False, False]  # 3 px: a sliver of its first place
    assert out[-1] == [True, False, False]  # moved, and still moved once it stands; the ghost never
    assert ages.moved(np.array([-1]), boxes[:1], image.astype(np.uint8), np.array([True])).tolist() == [False]


def test_a_ghost_motion_region_is_never_kept_nor_clustered():
    """A region the background subtractor calls foreground where nothing moves (the ghost of a walker that
    stood there while it learnt the background, vtest.avi): old and steady, but its place never changes.
    The object crossing beside it is kept and clustered."""
    gate, tracker, votes, ages = Gate.empty(8), BoxTracker(), LabelVotes(), TrackAges()
    rng = np.random.default_rng(1)
    ground = scene(rng).astype(np.float32)
    ghost = [200, 150, 260, 210]
    kept, clustered = [], []
    for i in range(12):
        image = ground + rng.normal(0, 3, ground.shape)
        x = 20 + 2 * i
        image[20:80, x:x + 60] = 255
        msg = embedded(i, [[x, 20, x + 60, 80], ghost], [np.eye(8)[5], np.eye(8)[6]], ["motion", "motion"],
                       np.clip(image, 0, 255).astype(np.uint8))
        labeled, unseen = label(gate, msg, tracker, votes, 32, ages, 5, 3)
        kept += [b.tolist() for b in labeled.xyxy]
        clustered += [int(np.argmax(e)) for e in unseen.embeddings]
    assert ghost not in kept and len(kept) >= 3
    assert clustered and set(clustered) == {5}
