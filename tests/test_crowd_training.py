"""COCO crowd boxes in training: neither positives nor negatives (model/targets.py, model/losses.py)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dataset import fields
from model import losses, presets, targets

CONFIG = presets.get("ssd300_vgg16_coco", 2)
ANCHORS = np.array([[0.0, 0.0, 0.2, 0.2],     # entirely inside the crowd box: IoA 1
                    [0.5, 0.5, 0.7, 0.7],     # the ordinary box itself: IoU 1
                    [0.3, 0.3, 0.5, 0.5],     # crowd overlap [0.3, 0.4]^2 = 0.01 of 0.04: IoA 0.25
                    [0.3, 0.0, 0.5, 0.2]],    # crowd overlap 0.1 x 0.2 = 0.02 of 0.04: IoA 0.5 exactly
                   np.float32)
CROWD_BOX, BOX = [0.0, 0.0, 0.4, 0.4], [0.5, 0.5, 0.7, 0.7]


def _encode(boxes, labels, crowd):
    return targets.encode_targets(np.array([boxes], np.float32), np.array([labels], np.int32),
                                  np.ones([1, len(labels)], bool), ANCHORS, CONFIG,
                                  gt_is_crowd=None if crowd is None else np.array([crowd]))


def test_crowd_box_is_not_matched_and_anchors_inside_it_are_ignored():
    out = _encode([CROWD_BOX, BOX], [2, 1], [True, False])
    # Anchor 0: inside the crowd (IoA 1) -> ignored, though the crowd box's IoU with it (0.04 / 0.16
    # = 0.25) would have made it the crowd box's forced match. Anchor 2: IoA 0.25 < 0.5 -> background.
    # Anchor 3: IoA 0.5 >= 0.5 -> ignored.
    np.testing.assert_array_equal(out[fields.CLS_TARGETS], [[fields.IGNORE_CLASS, 1, 0, fields.IGNORE_CLASS]])
    assert out[fields.NUM_POSITIVES].numpy().tolist() == [1.0]
    np.testing.assert_array_equal(out[fields.BOX_TARGETS].numpy()[0, [0, 2, 3]], 0.0)
    # Without crowd flags the same box is an ordinary object that claims anchor 0.
    plain = _encode([CROWD_BOX, BOX], [2, 1], None)
    assert plain[fields.CLS_TARGETS].numpy()[0, 0] == 2


def test_a_positive_inside_a_crowd_box_stays_positive():
    out = _encode([CROWD_BOX, [0.0, 0.0, 0.2, 0.2]], [2, 1], [True, False])
    np.testing.assert_array_equal(out[fields.CLS_TARGETS], [[1, 0, 0, fields.IGNORE_CLASS]])


def test_only_crowd_boxes_gives_no_positives_and_padding_crowd_flags_are_inert():
    out = _encode([CROWD_BOX], [2], [True])
    np.testing.assert_array_equal(out[fields.CLS_TARGETS], [[-1, 0, 0, -1]])
    assert out[fields.NUM_POSITIVES].numpy().tolist() == [0.0]
    padded = targets.encode_targets(np.array([[CROWD_BOX]], np.float32), np.zeros([1, 1], np.int32),
                                    np.zeros([1, 1], bool), ANCHORS, CONFIG, gt_is_crowd=np.ones([1, 1], bool))
    np.testing.assert_array_equal(padded[fields.CLS_TARGETS], [[0, 0, 0, 0]])


def test_intersection_over_anchor_area_by_hand():
    ioa = targets.intersection_over_anchor_area(tf.constant([[CROWD_BOX]]), tf.constant(ANCHORS))
    np.testing.assert_allclose(ioa.numpy(), [[[1.0, 0.0, 0.25, 0.5]]], rtol=1e-6)


def test_ignored_anchors_are_out_of_the_cross_entropy_and_of_mining():
    # Two columns (background, class 1). Background losses: anchor 1 would be the hardest negative
    # (log(1 + e^10) = 10.0000454), but it is ignored; with ratio 1 and one positive, anchor 2
    # (log(1 + e^5) = 5.0067153) is mined instead. The positive anchor 0 has CE log 2.
    logits = tf.constant([[[0.0, 0.0], [0.0, 10.0], [0.0, 5.0], [0.0, 1.0]]])
    cls_targets = tf.constant([[1, losses.IGNORE_CLASS, 0, 0]])
    zeros = tf.zeros([1, 4, 4])
    out = losses.multibox_loss(logits, zeros, cls_targets, zeros, negative_ratio=1.0)
    assert float(out["cls_loss"]) == pytest.approx(math.log(2) + math.log1p(math.exp(5)), rel=1e-5)
    assert float(out["num_positives"]) == 1.0
    mask = losses.hard_negative_mask(tf.constant([[0.0, 10.0, 5.0, 1.0]]), tf.constant([[True, False, False, False]]),
                                     1.0, ignored=tf.constant([[False, True, False, False]]))
    np.testing.assert_array_equal(mask.numpy(), [[False, False, True, False]])
    # Ratio 3: only two non-ignored negatives exist, so both and no more are mined.
    out3 = losses.multibox_loss(logits, zeros, cls_targets, zeros, negative_ratio=3.0)
    assert float(out3["cls_loss"]) == pytest.approx(
        math.log(2) + math.log1p(math.exp(5)) + math.log1p(math.exp(1)), rel=1e-5)
    assert losses.IGNORE_CLASS == fields.IGNORE_CLASS == -1
