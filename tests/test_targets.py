import math

import numpy as np
import pytest
import tensorflow as tf

from dataset import fields
from model import presets, targets

CONFIG = presets.get("ssd300_vgg16", 20)
ANCHORS = np.array([[0.0, 0.0, 0.5, 0.5],
                    [0.5, 0.5, 1.0, 1.0],
                    [0.0, 0.5, 0.5, 1.0]], np.float32)


def _encode(boxes, labels, valid, anchors=ANCHORS):
    out = targets.encode_targets(np.asarray(boxes, np.float32), np.asarray(labels, np.int32),
                                 np.asarray(valid, bool), anchors, CONFIG)
    return {k: v.numpy() for k, v in out.items()}


def test_hand_built_case():
    boxes = [[[0.0, 0.0, 0.5, 0.5],      # exactly anchor 0
              [0.5, 0.5, 1.0, 0.9]]]     # inside anchor 1: IoU 0.5*0.4 / 0.25 = 0.8
    out = _encode(boxes, [[7, 3]], [[True, True]])
    np.testing.assert_array_equal(out[fields.CLS_TARGETS], [[7, 3, 0]])
    # anchor 1: centre (0.75, 0.75), h = w = 0.5; box centre (0.75, 0.7), h 0.5, w 0.4:
    # ty 0, tx = -0.05 / (0.5 * 0.1) = -1, th 0, tw = log(0.4 / 0.5) / 0.2 = -1.1157
    np.testing.assert_allclose(out[fields.BOX_TARGETS],
                               [[[0, 0, 0, 0], [0, -1, 0, math.log(0.8) / 0.2], [0, 0, 0, 0]]], atol=1e-5)
    np.testing.assert_array_equal(out[fields.NUM_POSITIVES], [2.0])
    assert out[fields.CLS_TARGETS].dtype == np.int32 and out[fields.BOX_TARGETS].dtype == np.float32


def test_batch_equals_each_image_alone():
    rng = np.random.default_rng(0)
    anchors = np.concatenate([rng.uniform(0, 0.6, (40, 2)), np.zeros((40, 2))], 1).astype(np.float32)
    anchors[:, 2:] = anchors[:, :2] + rng.uniform(0.05, 0.4, (40, 2))
    counts = [0, 2, 4]
    g = max(counts)
    boxes = np.zeros((3, g, 4), np.float32)
    labels = np.zeros((3, g), np.int32)
    valid = np.zeros((3, g), bool)
    for b, n in enumerate(counts):
        yx = rng.uniform(0, 0.6, (n, 2))
        boxes[b, :n] = np.concatenate([yx, yx + rng.uniform(0.05, 0.4, (n, 2))], 1)
        boxes[b, n:] = rng.uniform(0, 1, (g - n, 4))    # garbage in padding must not matter
        labels[b, :n] = rng.integers(1, 21, n)
        labels[b, n:] = 99
        valid[b, :n] = True
    batched = _encode(boxes, labels, valid, anchors)
    for b, n in enumerate(counts):
        alone = _encode(boxes[b:b + 1, :n], labels[b:b + 1, :n], valid[b:b + 1, :n], anchors)
        for key, value in alone.items():
            np.testing.assert_allclose(batched[key][b:b + 1], value, atol=1e-6, err_msg=key)
    assert batched[fields.NUM_POSITIVES][1] >= 2     # each box claims at least its best anchor


def test_zero_box_image_inside_tf_data_map():
    def encode(boxes, labels, valid):
        return targets.encode_targets(boxes, labels, valid, ANCHORS, CONFIG)

    ds = tf.data.Dataset.from_tensors((tf.zeros([1, 0, 4]), tf.zeros([1, 0], tf.int32),
                                       tf.zeros([1, 0], tf.bool))).map(encode)
    out = next(iter(ds))
    np.testing.assert_array_equal(out[fields.CLS_TARGETS], [[0, 0, 0]])
    np.testing.assert_array_equal(out[fields.BOX_TARGETS], np.zeros((1, 3, 4)))
    np.testing.assert_array_equal(out[fields.NUM_POSITIVES], [0.0])


@pytest.mark.parametrize("matching, positives", [("caffe_bipartite", 0.0), ("ssd_pytorch", 1.0)])
@pytest.mark.parametrize("size", [1e-9, 0.0])
def test_degenerate_box_gets_finite_targets(size, matching, positives):
    import dataclasses
    out = targets.encode_targets(np.array([[[0.1, 0.1, 0.1 + size, 0.1 + size]]], np.float32),
                                 np.array([[5]], np.int32), np.ones((1, 1), bool), ANCHORS,
                                 dataclasses.replace(CONFIG, matching=matching))
    assert np.all(np.isfinite(out[fields.BOX_TARGETS].numpy()))
    # IoU 0 with every anchor: Caffe keeps no overlap <= 1e-6, so the box gets no anchor; ssd.pytorch's
    # argmax of zeros claims anchor 0.
    assert out[fields.NUM_POSITIVES].numpy()[0] == positives


def test_two_boxes_sharing_a_best_anchor_both_get_one():
    import dataclasses
    anchors = np.array([[0.0, 0.0, 0.5, 0.5],
                        [0.0, 0.25, 0.5, 0.75],
                        [0.6, 0.6, 1.0, 1.0]], np.float32)
    boxes = np.array([[[0.0, 0.0, 0.5, 0.45],      # IoU anchor 0: 0.225/0.25 = 0.9; anchor 1: 0.1/0.375 = 0.267
                       [0.0, 0.0, 0.4, 0.4]]],     # IoU anchor 0: 0.16/0.25 = 0.64; anchor 1: 0.06/0.35 = 0.171
                     np.float32)
    labels, valid = np.array([[4, 9]], np.int32), np.ones((1, 2), bool)
    caffe = targets.encode_targets(boxes, labels, valid, anchors, CONFIG)
    # Caffe: (box 0, anchor 0) at 0.9 first, then box 1's best free anchor, anchor 1 (0.171).
    np.testing.assert_array_equal(caffe[fields.CLS_TARGETS].numpy(), [[4, 9, 0]])
    np.testing.assert_array_equal(caffe[fields.NUM_POSITIVES].numpy(), [2.0])
    # ssd.pytorch's rule: both claim anchor 0, the later box (9) keeps it; box 0 ends with no anchor.
    pytorch = targets.encode_targets(boxes, labels, valid, anchors, dataclasses.replace(CONFIG, matching="ssd_pytorch"))
    np.testing.assert_array_equal(pytorch[fields.CLS_TARGETS].numpy(), [[9, 0, 0]])
