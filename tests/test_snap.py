"""Box refinement by GrabCut (models/snap.py): a window that cuts into an object or holds background snaps to it."""
import cv2
import numpy as np

from models.proposals import box_iou
from models.snap import snap


def scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy textured background with one object of another colour (an ellipse, so its box is not a
    window's shape) -> image, the object's exact box (1, 4)."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal((90, 110, 100), 12, (240, 320, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.ellipse(mask, (170, 120), (40, 28), 0, 0, 360, 1, -1)
    obj = np.clip(rng.normal((200, 60, 40), 15, image.shape), 0, 255).astype(np.uint8)
    image[mask > 0] = obj[mask > 0]
    ys, xs = np.nonzero(mask)
    return image, np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)


def test_a_window_that_cuts_into_the_object_snaps_to_its_box():
    image, box = scene()
    x1, y1, x2, y2 = box[0]
    w, h = x2 - x1, y2 - y1
    windows = np.array([[x1 + 0.25 * w, y1 - 0.1 * h, x2 + 0.2 * w, y2 - 0.2 * h],   # shifted right, cut
                        [x1 - 0.3 * w, y1 - 0.3 * h, x2 + 0.3 * w, y2 + 0.3 * h],   # much background
                        [x1 + 0.1 * w, y1 + 0.1 * h, x2 - 0.1 * w, y2 - 0.1 * h]],  # inside the object
                       np.float32)
    before, after = box_iou(windows, box)[:, 0], box_iou(snap(image, windows), box)[:, 0]
    assert before.max() < 0.7
    assert (after >= 0.85).all(), after


def test_plain_regions_and_edges_keep_a_valid_box():
    image, _ = scene(1)
    flat = np.full((100, 120, 3), 128, np.uint8)
    windows = np.array([[10, 10, 40, 50], [0, 0, 2, 2], [300, 200, 320, 240], [-20, -20, 30, 30]], np.float32)
    for img in (image, flat):
        out = snap(img, windows)
        assert out.shape == (4, 4) and out.dtype == np.float32 and np.isfinite(out).all()
        assert (out[:, 2] > out[:, 0]).all() and (out[:, 3] > out[:, 1]).all()
    # one colour: nothing to separate, every window comes back as it was
    np.testing.assert_array_equal(snap(flat, windows[:1]), windows[:1])
    assert snap(image, np.zeros((0, 4), np.float32)).shape == (0, 4)


def test_the_class_search_embeds_its_windows_snapped_to_the_object():
    from test_search import Fake, detections  # the search's fake embedder: crop colour = map colour

    from models.sddc import Gate, normalize
    from models.search import ClassSearch
    from stages.embed import Search, embed

    rng = np.random.default_rng(0)

    def at(x: int, y: int) -> tuple[np.ndarray, np.ndarray]:  # an object off the 16-px grid, on a noisy floor
        image = np.clip(rng.normal(40, 6, (160, 240, 3)), 0, 255).astype(np.uint8)
        image[y:y + 48, x:x + 32] = np.clip(rng.normal((20, 200, 60), 6, (48, 32, 3)), 0, 255).astype(np.uint8)
        return image, np.array([[x, y, x + 32, y + 48]], np.float32)

    model = Fake()
    first, box = at(32, 16)
    gate = Gate.empty(set_size=7)
    gate.add_members("novel-1", normalize(model.embed([first[16:64, 32:64], first[12:68, 28:68]])), 1.0)
    still, truth = at(168, 100)
    iou = {}
    for snapped in (False, True):
        search = Search(model, gate, ClassSearch(), snap=snapped)
        embed(model, [detections(0, first, box)], search)  # learns the class's look in the map
        out = embed(model, [detections(1, still, np.zeros((0, 4)))], search)[0]
        iou[snapped] = box_iou(out.xyxy, truth).max(initial=0)
    assert iou[True] >= 0.9 and iou[True] > iou[False], iou
