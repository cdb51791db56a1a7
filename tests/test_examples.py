"""One embedding path: an example crop the pipeline saves embeds like the live box it came from."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.boxes import crop, example, pack
from models.sddc import normalize
from stream.messages import UnseenBatch
from stream.wire import decode, encode


@pytest.fixture(scope="module")
def embedder():
    from models.registry import EMBEDDERS
    return EMBEDDERS.create("efficientnet_lite0", input_size=128, precision="fp32")


def test_saved_examples_embed_like_the_live_boxes(embedder, tmp_path, vtest_video):
    """Real weights, real frame: every box goes through the gate's example path, the wire and a PNG
    file, and is embedded again as a gallery image would be."""
    cap = cv2.VideoCapture(str(vtest_video))
    for _ in range(10):
        ok, image = cap.read()
    assert ok
    h, w = image.shape[:2]
    xyxy = np.array([[10, 20, 50, 110], [100, 50, 180, 300], [w - 300, h - 260, w - 20, h - 10],
                     [5, 5, 40, 30]], np.float32)  # fits 128 px, and three sizes that do not
    live = crop(image, xyxy)
    slots, hw = pack([example(c, 128) for c in live], 128)
    batch = decode(encode(UnseenBatch("cam", 0, np.ones((4, 8), np.float32), np.arange(4), slots, hw)))
    files = []
    for i, ex in enumerate(batch.examples()):
        cv2.imwrite(str(tmp_path / f"{i}.png"), ex)
        files.append(cv2.imread(str(tmp_path / f"{i}.png")))
    a, b = normalize(embedder.embed(live)), normalize(embedder.embed(files))
    cos = (a * b).sum(axis=1)
    assert cos[0] > 0.9999 and cos[3] > 0.9999  # boxes that fit are saved as they are
    assert cos.min() > 0.999, cos  # measured 0.9998 for the 80x250 box
    # the old 64 px letterboxed thumbnail on black did not embed like the box
    old = np.zeros((64, 64, 3), np.uint8)
    small = cv2.resize(live[1], (max(1, round(64 * 80 / 250)), 64), interpolation=cv2.INTER_AREA)
    old[:, (64 - small.shape[1]) // 2:(64 - small.shape[1]) // 2 + small.shape[1]] = small
    assert float((a[1] * normalize(embedder.embed([old]))[0]).sum()) < cos[1]
