import math

import numpy as np

from model import box_coder

ANCHOR = [0.4, 0.4, 0.6, 0.6]   # centre (0.5, 0.5), h = w = 0.2


def _random_boxes(rng, n):
    yx = rng.uniform(0.0, 0.8, size=(n, 2))
    hw = rng.uniform(0.01, 0.5, size=(n, 2))
    return np.concatenate([yx, yx + hw], axis=1).astype(np.float32)


def test_encode_hand_computed():
    # box centre (0.55, 0.5), h 0.2, w 0.4:
    # ty = 0.05 / (0.2 * 0.1) = 2.5; tx = 0; th = log(0.2/0.2)/0.2 = 0; tw = log(0.4/0.2)/0.2 = 3.4657
    codes = box_coder.encode([[0.45, 0.3, 0.65, 0.7]], [ANCHOR]).numpy()
    np.testing.assert_allclose(codes, [[2.5, 0.0, 0.0, math.log(2) / 0.2]], rtol=1e-5, atol=1e-6)


def test_decode_hand_computed():
    codes = [[2.5, 0.0, 0.0, math.log(2) / 0.2]]
    np.testing.assert_allclose(box_coder.decode(codes, [ANCHOR]).numpy(), [[0.45, 0.3, 0.65, 0.7]], atol=1e-6)


def test_decode_inverts_encode_on_random_boxes():
    rng = np.random.default_rng(0)
    anchors = _random_boxes(rng, 64)
    boxes = np.stack([_random_boxes(rng, 64), _random_boxes(rng, 64)])     # [B=2, A=64, 4]
    back = box_coder.decode(box_coder.encode(boxes, anchors), anchors).numpy()
    np.testing.assert_allclose(back, boxes, atol=1e-5)


def test_custom_variances_scale_codes():
    unit = box_coder.encode([[0.45, 0.3, 0.65, 0.7]], [ANCHOR], variances=(1, 1, 1, 1)).numpy()
    np.testing.assert_allclose(unit, [[0.25, 0.0, 0.0, math.log(2)]], rtol=1e-5, atol=1e-6)


def test_degenerate_boxes_give_finite_codes():
    boxes = [[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [0.3, 0.2, 0.3, 0.9]]   # zero h and/or w
    codes = box_coder.encode(boxes, [ANCHOR] * 3).numpy()
    assert np.all(np.isfinite(codes))


def test_huge_codes_decode_to_finite_boxes():
    boxes = box_coder.decode([[0.0, 0.0, 1e4, 1e4]], [ANCHOR]).numpy()
    assert np.all(np.isfinite(boxes))
    # th clipped at log(1000/16): the box is at most 62.5 times the anchor's side.
    np.testing.assert_allclose(boxes[0, 2] - boxes[0, 0], 0.2 * 1000 / 16, rtol=1e-5)
