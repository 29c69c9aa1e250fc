import numpy as np
import tensorflow as tf

from model import matcher

NO = matcher.NO_MATCH


def _match(iou, valid=None, threshold=0.5):
    iou = np.asarray(iou, np.float32)
    if valid is None:
        valid = np.ones(iou.shape[:2], bool)
    return matcher.match(iou, valid, threshold).numpy()


def test_hand_built_iou_matrix():
    iou = [[[0.7, 0.6, 0.1, 0.0, 0.3],      # gt 0: best anchor 0
            [0.2, 0.55, 0.0, 0.4, 0.45]]]   # gt 1: best anchor 1, where it beats gt 0's 0.6 by claiming
    # anchor 0: gt 0 (claim); anchor 1: gt 1 (claim, although gt 0 has the higher IoU there);
    # anchors 2-4: best IoU 0.1 / 0.4 / 0.45 < 0.5 -> background.
    np.testing.assert_array_equal(_match(iou), [[0, 1, NO, NO, NO]])


def test_threshold_is_inclusive():
    iou = [[[0.9, 0.5, 0.49]]]
    np.testing.assert_array_equal(_match(iou), [[0, 0, NO]])


def test_box_below_threshold_still_claims_its_best_anchor():
    iou = [[[0.1, 0.3, 0.2]],
           [[0.0, 0.0, 0.0]]]   # no overlap at all: the argmax tie goes to the lowest anchor index
    np.testing.assert_array_equal(_match(iou), [[NO, 0, NO], [0, NO, NO]])


def test_two_boxes_wanting_the_same_anchor_highest_gt_index_wins():
    iou = [[[0.9, 0.5],
            [0.8, 0.1]]]
    # Both claim anchor 0: gt 1 wins it. Anchor 1 then goes to gt 0 by threshold (0.5 >= 0.5).
    np.testing.assert_array_equal(_match(iou), [[1, 0]])


def test_zero_boxes_all_background():
    np.testing.assert_array_equal(_match(np.zeros((2, 0, 3))), np.full((2, 3), NO))
    np.testing.assert_array_equal(_match(np.ones((1, 2, 3)), valid=np.zeros((1, 2), bool)),
                                  np.full((1, 3), NO))


def test_padding_never_matches_nor_claims():
    iou = [[[0.3, 0.2, 0.1],
            [0.9, 0.9, 0.95]]]  # padding row with high IoUs everywhere
    valid = np.array([[True, False]])
    np.testing.assert_array_equal(_match(iou, valid), [[0, NO, NO]])


def test_vectorised_in_graph_with_unknown_sizes():
    fn = tf.function(matcher.match, input_signature=[
        tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([None, None], tf.bool),
        tf.TensorSpec([], tf.float32)])
    iou = np.array([[[0.7, 0.6, 0.1]], [[0.2, 0.1, 0.3]]], np.float32)
    got = fn(iou, np.ones((2, 1), bool), 0.5).numpy()
    np.testing.assert_array_equal(got, [[0, 0, NO], [NO, NO, 0]])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(fn(np.zeros((2, 0, 3), np.float32), np.zeros((2, 0), bool), 0.5).numpy(),
                                  np.full((2, 3), NO))
