"""The overlay's parts on their own: palette, text colour, label placement, class ids, the HUD's rate and class count,
the mosaic of several sources."""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import supervision as sv

from conftest import frame_fields
from stages.sink import Hud
from stream.sources import save_paths
from stream.messages import Frame, LabeledFrame
from stream.overlay import (PALETTE, UNSEEN, ClassBook, Overlay, boxes_overlap, cell_size, contrast, grid, ink, mosaic,
                            place_labels)


def lab(c: sv.Color) -> np.ndarray:
    """CIELAB (L in 0..100) of a colour."""
    return cv2.cvtColor(np.float32([[[c.r, c.g, c.b]]]) / 255, cv2.COLOR_RGB2LAB)[0, 0]


def test_palette_colours_are_distinct_and_never_the_unseen_grey():
    delta = {(a, b): float(np.linalg.norm(lab(PALETTE[a]) - lab(PALETTE[b])))
             for a, b in itertools.combinations(range(len(PALETTE)), 2)}
    assert len(PALETTE) >= 10
    assert min(delta.values()) >= 35, min(delta.items(), key=lambda kv: kv[1])  # CIE76: 2.3 is just noticeable
    assert min(float(np.linalg.norm(lab(c) - lab(UNSEEN))) for c in PALETTE) >= 30
    assert min(float(np.hypot(*lab(c)[1:])) for c in PALETTE) >= 30  # chroma: no class colour reads as grey


@pytest.mark.parametrize("fill, want", [(sv.Color(0, 0, 128), sv.Color.WHITE), (sv.Color(255, 255, 0), sv.Color.BLACK),
                                        (sv.Color(20, 20, 20), sv.Color.WHITE), (sv.Color(230, 230, 230), sv.Color.BLACK)])
def test_ink_picks_the_readable_text_colour(fill, want):
    assert ink(fill) == want


def test_every_label_fill_has_readable_text():
    for fill in (*PALETTE, UNSEEN):
        assert contrast(fill, ink(fill)) >= 4.5, fill  # WCAG AA for normal text


def test_class_book_keeps_ids_through_renames_and_never_reuses_them():
    book = ClassBook()
    assert [book.id(n) for n in ("a", "b", "a", "c")] == [0, 1, 0, 2]
    book.rename("b", "cyclist")
    book.remove("a")
    assert book.ids == {"cyclist": 1, "c": 2} and book.id("d") == 3 and len(book) == 3


def inside(rects: np.ndarray, wh: tuple[int, int]) -> bool:
    return bool(((rects[:, :2] >= 0) & (rects[:, 2:] <= np.array(wh) - 1)).all())


def pairwise_disjoint(rects: np.ndarray) -> bool:
    return not any(boxes_overlap(rects[i], rects[i + 1:]).any() for i in range(len(rects)))


@pytest.mark.parametrize("boxes, wh", [
    (np.zeros((0, 4)), (320, 240)),                              # empty
    (np.float32([[100, 100, 160, 200]] * 6), (320, 240)),        # one object six times: labels stack
    (np.float32([[0, 0, 20, 20], [300, 220, 319, 239]]), (320, 240)),  # in the corners: labels stay inside
    (np.random.default_rng(0).uniform(0, 300, (40, 2)).repeat(2, axis=1) + [0, 0, 20, 30], (320, 240)),  # crowd
])
def test_labels_neither_overlap_nor_leave_the_frame(boxes, wh):
    sizes = np.tile([90, 17], (len(boxes), 1))
    blocked = np.array([[0, 0, 120, 50]])
    rects = place_labels(boxes, sizes, wh, blocked)
    placed = rects[rects[:, 0] >= 0]
    assert rects.shape == (len(boxes), 4) and inside(placed, wh) and pairwise_disjoint(placed)
    assert not any(boxes_overlap(r, blocked).any() for r in placed)
    assert ((placed[:, 2:] - placed[:, :2] + 1) == [90, 17]).all()
    assert len(placed) >= min(len(boxes), 6)  # the frame has room for these; only a crowd loses labels


def test_a_label_sits_right_above_its_box_when_there_is_room():
    rects = place_labels(np.float32([[50, 100, 150, 200]]), np.array([[60, 15]]), (320, 240))
    assert rects[0].tolist() == [50, 100 - 15 - 1, 50 + 59, 100 - 2]


def test_a_label_wider_than_the_frame_is_left_out():
    assert (place_labels(np.float32([[0, 0, 10, 10]]), np.array([[400, 15]]), (320, 240)) == -1).all()


def test_fps_is_frames_over_wall_time_not_burst_arrivals():
    hud = Hud()
    for burst in range(30):  # 1 frame/s, delivered as bursts of 4 frames 5 ms apart every 4 s
        for k in range(4):
            hud.on_frame(1000.0 + 4 * burst + 0.005 * k)
    assert hud.fps == pytest.approx(1.0, rel=0.1)
    steady = Hud()
    assert steady.fps is None and steady.lines(0, 0)[0].startswith("  ... fps")
    for i in range(200):
        steady.on_frame(i / 25)
    assert steady.fps == pytest.approx(25.0, rel=0.01) and steady.lines(199, 0)[0] == " 25.0 fps  frame 199"


def test_classes_loaded_from_memory_are_counted_and_renames_keep_colours():
    hud = Hud()
    hud.on_event({"type": "stage_started", "stage": "cluster", "classes": 3, "names": ["dog", "cat", "van"]})
    assert hud.lines(0, 0)[2] == "classes 3"
    hud.on_event({"type": "class_discovered", "class": "novel-1"})
    hud.on_event({"type": "class_renamed", "class": "cyclist", "old": "cat"})
    hud.on_event({"type": "class_merged", "class": "dog", "merged": "van"})
    assert hud.book.ids == {"dog": 0, "cyclist": 1, "novel-1": 3} and hud.lines(0, 0)[2] == "classes 3"
    old = Hud()
    old.on_event({"type": "stage_started", "stage": "cluster", "classes": 2})  # a log without names
    assert old.lines(0, 0)[2] == "classes 2"


def labeled(image: np.ndarray, xyxy, labels, seen) -> LabeledFrame:
    fields = frame_fields(0, *image.shape[:2])
    fields["image"], n = image, len(labels)
    return LabeledFrame(Frame(**fields), xyxy=np.float32(xyxy), scores=np.linspace(0.9, 0.5, n).astype(np.float32),
                        det_labels=("person",) * n, labels=tuple(labels), seen=np.array(seen, bool),
                        distance=np.zeros(n, np.float32), track=np.full(n, -1, np.int64))


def near(image: np.ndarray, c: sv.Color, tol: int = 10) -> np.ndarray:
    return np.abs(image.astype(int) - np.array(c.as_bgr())).max(axis=2) <= tol


def test_draw_colours_boxes_by_class_and_lists_them_in_the_legend():
    msg = labeled(np.zeros((300, 400, 3), np.uint8), [[40, 80, 140, 260], [160, 90, 240, 250], [260, 100, 360, 250]],
                  ["novel-1", "novel-2", "unseen"], [True, True, False])
    book = ClassBook()
    image = Overlay((400, 300)).draw(msg, book, [" 12.0 fps  frame 0"])
    assert book.ids == {"novel-1": 0, "novel-2": 1}
    assert near(image[150:200, 38:43], PALETTE[0]).sum() > 50 and near(image[150:200, 158:163], PALETTE[1]).sum() > 50
    assert near(image[150:200, 258:263], UNSEEN).sum() > 30  # unseen: grey
    legend = image[:80, 300:]
    assert near(legend, PALETTE[0]).sum() > 20 and near(legend, PALETTE[1]).sum() > 20 and near(legend, UNSEEN).sum() > 20
    assert near(image[:30, :150], sv.Color.WHITE, 60).sum() > 30  # HUD text


def test_a_hud_per_source_counts_its_own_frames_and_drops():
    hud = Hud()
    for i in range(100):  # a at 10 frames/s, b at 2 frames/s, over the same 10 s
        hud.on_frame(i / 10, "/data/a.mp4")
        if i % 5 == 0:
            hud.on_frame(i / 10 + 0.01, "/data/b.avi")
    hud.on_event({"type": "frame_dropped", "stage": "detect", "source": "/data/b.avi", "total": 7})
    hud.on_event({"type": "stage_started", "stage": "cluster", "classes": 2})
    assert hud.rate("/data/a.mp4") == pytest.approx(10.0, rel=0.02)
    assert hud.rate("/data/b.avi") == pytest.approx(2.0, rel=0.1)
    assert hud.fps == pytest.approx(12.0, rel=0.05)  # every source together
    assert hud.lines(99, 1, "/data/a.mp4") == ["a.mp4", " 10.0 fps  frame 99", "dropped 0  rejected 1", "classes 2"]
    assert hud.lines(95, 1, "/data/b.avi")[:3] == ["b.avi", "  2.0 fps  frame 95", "dropped 7  rejected 1"]
    assert hud.lines(99, 1) == [f"{hud.fps:5.1f} fps  frame 99", "dropped 7  rejected 1", "classes 2"]  # one source: as before


def test_grid_and_cell_fit_the_screen():
    assert [grid(n) for n in (1, 2, 3, 4, 5, 9)] == [(1, 1), (2, 1), (2, 2), (2, 2), (3, 2), (3, 3)]
    assert cell_size((768, 576), 2) == (768, 576)  # 1536 x 576 fits 1920 x 1080
    w, h = cell_size((1280, 720), 4)  # 2 x 2 of 1280 x 720 does not: shrunk, aspect kept
    assert 2 * w <= 1920 and 2 * h <= 1080 and w / h == pytest.approx(1280 / 720, rel=0.01)


def test_mosaic_places_each_tile_in_its_cell_and_notes_the_missing_ones():
    red, blue = np.zeros((60, 80, 3), np.uint8), np.zeros((120, 80, 3), np.uint8)
    red[:] = (0, 0, 255)
    blue[:] = (255, 0, 0)
    out = mosaic([red, blue, None], ["", "", "waiting for c.mp4"], (80, 60))
    assert out.shape == (120, 160, 3)  # 2 x 2 cells of 80 x 60
    assert (out[5:55, 5:75] == (0, 0, 255)).all()  # tile 0: fills its cell
    right = out[0:60, 80:160]  # tile 1 (twice as tall): shrunk to 30 x 60, centred, dark beside it
    assert (right[5:55, 30:50] == (255, 0, 0)).all() and (right[:, 2:20] == 32).all()
    assert (out[:, 80] == 128).all() and (out[60, :] == 128).all()  # rules between cells
    assert (out[61:120, 1:80] > 200).any(), "the note of the missing tile"
    assert (out[61:120, 81:160] == 32).all()  # the fourth cell is empty


def test_several_sources_save_one_video_each_beside_the_path_given():
    assert save_paths("/r/annotated.mp4", ["/v/cam.avi"]) == {"/v/cam.avi": "/r/annotated.mp4"}
    got = save_paths("/r/annotated.mp4", ["/v/vtest.avi", "/w/bikes.mp4", "/x/vtest.mp4", "/imgs/day 1/"])
    assert got == {"/v/vtest.avi": "/r/annotated-vtest.mp4", "/w/bikes.mp4": "/r/annotated-bikes.mp4",
                   "/x/vtest.mp4": "/r/annotated-vtest-2.mp4", "/imgs/day 1/": "/r/annotated-day_1.mp4"}
