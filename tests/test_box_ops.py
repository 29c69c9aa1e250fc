import numpy as np

from model import box_ops

A = [0.0, 0.0, 2.0, 2.0]      # area 4
B = [1.0, 1.0, 3.0, 3.0]      # area 4, overlaps A in the unit square [1,1,2,2]
C = [0.0, 0.0, 1.0, 1.0]      # area 1, inside A
FAR = [5.0, 5.0, 6.0, 6.0]    # disjoint from all
POINT = [0.5, 0.5, 0.5, 0.5]  # zero area


def test_iou_hand_computed():
    got = box_ops.iou([A, B], [B, C, FAR]).numpy()
    expected = [[1 / 7,   # A,B: intersection 1, union 4 + 4 - 1 = 7
                 1 / 4,   # A,C: intersection 1, union 4 + 1 - 1 = 4
                 0.0],
                [1.0,     # B,B
                 0.0,     # B,C touch at the corner (1,1) only
                 0.0]]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_iou_zero_area_is_zero_not_nan():
    got = box_ops.iou([POINT, [0, 0, 0, 0]], [POINT, [0, 0, 0, 0], A]).numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, np.zeros((2, 3)))


def test_iou_broadcasts_batch_against_anchors():
    gt = np.array([[A, B], [C, POINT]], np.float32)           # [B=2, G=2, 4]
    anchors = np.array([A, B, C], np.float32)                # [3, 4]
    got = box_ops.iou(gt, anchors).numpy()
    assert got.shape == (2, 2, 3)
    np.testing.assert_allclose(got[1, 0], [1 / 4, 0, 1], rtol=1e-6)


def test_centers_round_trip_and_literal():
    # [ymin 1, xmin 2, ymax 5, xmax 4] -> centre (3, 3), h 4, w 2.
    np.testing.assert_allclose(box_ops.yxyx_to_centers([1.0, 2.0, 5.0, 4.0]).numpy(), [3, 3, 4, 2])
    boxes = np.random.default_rng(0).uniform(size=(10, 4)).astype(np.float32)
    back = box_ops.centers_to_yxyx(box_ops.yxyx_to_centers(boxes)).numpy()
    np.testing.assert_allclose(back, boxes, atol=1e-6)
