"""Tracks across frames, label votes per track, and what the gate sends to clustering when tracking."""
from __future__ import annotations

import numpy as np

from conftest import frame_fields
from models.sddc import Gate
from models.tracks import BoxTracker, LabelVotes
from models.boxes import example, pack
from stages.gate import label
from stream.messages import Frame, FrameEmbeddings, UnseenBatch


def moving_boxes(f: int) -> np.ndarray:
    """Two objects: one moving right 6 px a frame, one moving up 3 px a frame."""
    return np.float32([[10 + 6 * f, 10, 40 + 6 * f, 60], [200, 200 - 3 * f, 240, 260 - 3 * f]])


def test_tracker_keeps_ids_across_a_moving_box_whatever_the_input_order():
    tracker = BoxTracker()
    ids = []
    for f in range(12):
        boxes = moving_boxes(f)
        order = [1, 0] if f % 2 else [0, 1]  # detectors give no stable order
        got = tracker.update(boxes[order], np.float32([0.9, 0.8])[order])
        ids.append(got[np.argsort(order)])  # back to object order
    ids = np.array(ids)
    assert (ids[0] == -1).all()  # a track is confirmed on its second frame
    assert len(set(ids[1:, 0])) == 1 and len(set(ids[1:, 1])) == 1 and ids[1, 0] != ids[1, 1]
    assert tracker.update(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)).shape == (0,)


def test_votes_stop_flicker_and_follow_a_real_change():
    votes = LabelVotes(window=5, min_votes=3, min_share=0.6)
    seq = ["a", "a", "a", "b", "a", "b", "b", "b", "b"]
    shown = [votes.vote(np.array([7]), [lab])[0] for lab in seq]
    assert shown == ["a", "a", "a", "a", "a", "a", "b", "b", "b"]
    assert votes.vote(np.array([-1]), ["c"]) == ["c"]  # untracked: the frame's own decision
    votes.forget_except({"a"})
    assert votes.vote(np.array([7]), ["a"]) == ["a"]


def frame(f: int, embeddings: np.ndarray) -> FrameEmbeddings:
    fields = frame_fields(f, h=300, w=300)
    return FrameEmbeddings(Frame(**fields), xyxy=moving_boxes(f), scores=np.float32([0.9, 0.8]),
                           det_labels=("person", "car"), embeddings=embeddings)


def test_gate_with_tracking_sends_only_confirmed_unseen_tracks():
    gate = Gate.empty(4)
    gate.add("novel-1", np.float32([1, 0, 0, 0]), 0.1, 9)
    tracker, votes = BoxTracker(), LabelVotes()
    emb = np.float32([[1, 0, 0, 0], [0, 1, 0, 0]])  # object 0 is novel-1, object 1 unseen
    sent = []
    for f in range(4):
        labeled, unseen = label(gate, frame(f, emb), tracker, votes, thumb=32)
        assert labeled.labels == ("novel-1", "unseen") and labeled.seen.tolist() == [True, False]
        sent.append(unseen.track.tolist())
        assert unseen.thumbs.shape == (len(unseen), 32, 32, 3)
    assert sent[0] == [] and len({t for s in sent[1:] for t in s}) == 1  # object 1, once confirmed
    assert (labeled.track >= 0).all()


def test_examples_keep_the_box_small_ones_exactly():
    small = np.random.default_rng(0).integers(0, 255, (40, 10, 3), np.uint8)
    assert np.array_equal(example(small, 64), small)  # no padding, no resampling
    big = example(np.zeros((300, 100, 3), np.uint8), 64)
    assert big.shape == (64, 64, 3)  # only the sides longer than 64 shrink
    tall = example(np.zeros((300, 30, 3), np.uint8), 64)
    assert tall.shape == (64, 30, 3)
    slots, hw = pack([small, tall], 64)
    assert slots.shape == (2, 64, 64, 3) and hw.tolist() == [[40, 10], [64, 30]]
    batch = UnseenBatch("t", 0, np.ones((2, 4), np.float32), np.zeros(2, np.int64), slots, hw)
    assert [u.shape for u in batch.examples()] == [(40, 10, 3), (64, 30, 3)]
    assert np.array_equal(batch.examples()[0], small)
