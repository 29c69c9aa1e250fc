import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from dataset import fields
from model import postprocess, presets

# Zero box codes decode to the anchors themselves, so these are the candidate boxes.
ANCHORS = np.array([
    [0.0, 0.0, 0.5, 0.5],      # a0
    [0.0, 0.05, 0.5, 0.55],    # a1: IoU with a0 = 0.225 / 0.275 = 0.818 > 0.45
    [0.0, 0.3, 0.5, 0.8],      # a2: IoU with a0 = 0.1 / 0.4 = 0.25 < 0.45
    [0.6, 0.6, 1.2, 1.0],      # a3: leaves the image, clipped to [0.6, 0.6, 1, 1]
    [0.7, 0.0, 0.9, 0.2],      # a4: background
], np.float32)
# Softmax probabilities [background, class 1, class 2]; logits = log(p) reproduce them exactly.
PROBS = np.array([
    [0.20, 0.76, 0.04],   # class 1 kept (0.76); class 2 under the 0.05 threshold
    [0.30, 0.60, 0.10],   # class 1 suppressed by a0; class 2 kept: other classes never suppress
    [0.50, 0.48, 0.02],   # class 1 kept: overlaps a0 below 0.45
    [0.10, 0.01, 0.89],   # class 2 kept, clipped
    [0.97, 0.02, 0.01],   # nothing over the threshold
], np.float32)


def _run(probs, config, batch_fn=None):
    logits = np.log(probs)
    codes = np.zeros(probs.shape[:-1] + (4,), np.float32)
    fn = batch_fn or postprocess.postprocess
    return {k: v.numpy() for k, v in fn(logits, codes, ANCHORS, config).items()}


CONFIG = presets.get("ssd300_vgg16", 2, score_threshold=0.05, max_detections=6)


def test_hand_built_two_class_case():
    background_image = np.tile([[0.99, 0.005, 0.005]], (5, 1)).astype(np.float32)
    out = _run(np.stack([PROBS, background_image]), CONFIG)
    np.testing.assert_array_equal(out[fields.NUM_DETECTIONS], [4, 0])
    np.testing.assert_array_equal(out[fields.DETECTION_CLASSES], [[2, 1, 1, 2, 0, 0], [0] * 6])
    np.testing.assert_allclose(out[fields.DETECTION_SCORES][0], [0.89, 0.76, 0.48, 0.10, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out[fields.DETECTION_BOXES][0],
                               [[0.6, 0.6, 1.0, 1.0], ANCHORS[0], ANCHORS[2], ANCHORS[1],
                                [0, 0, 0, 0], [0, 0, 0, 0]], atol=1e-6)
    np.testing.assert_array_equal(out[fields.DETECTION_BOXES][1], np.zeros((6, 4)))
    np.testing.assert_array_equal(out[fields.DETECTION_SCORES][1], np.zeros(6))


def test_output_dtypes_and_fixed_shapes_in_tf_function():
    fn = tf.function(lambda logits, codes: postprocess.postprocess(logits, codes, ANCHORS, CONFIG))
    out = _run(PROBS[None], CONFIG, batch_fn=lambda logits, codes, *_: fn(logits, codes))
    assert out[fields.DETECTION_BOXES].shape == (1, 6, 4) and out[fields.DETECTION_BOXES].dtype == np.float32
    assert out[fields.DETECTION_SCORES].shape == (1, 6) and out[fields.DETECTION_SCORES].dtype == np.float32
    assert out[fields.DETECTION_CLASSES].dtype == np.int32 and out[fields.NUM_DETECTIONS].dtype == np.int32
    np.testing.assert_array_equal(out[fields.DETECTION_CLASSES], [[2, 1, 1, 2, 0, 0]])


def test_max_detections_keeps_the_best():
    out = _run(PROBS[None], presets.get("ssd300_vgg16", 2, score_threshold=0.05, max_detections=2))
    np.testing.assert_array_equal(out[fields.NUM_DETECTIONS], [2])
    np.testing.assert_array_equal(out[fields.DETECTION_CLASSES], [[2, 1]])


def test_per_class_candidates_are_preselected_before_nms():
    # Caffe nms top_k: with 2 candidates per class, class 1 sees only a0 (0.76) and a1 (0.60); a1 is
    # suppressed, and a2 (0.48) was never a candidate.
    config = presets.get("ssd300_vgg16", 2, score_threshold=0.05, max_detections=6, max_detections_per_class=2)
    out = _run(PROBS[None], config)
    np.testing.assert_array_equal(out[fields.DETECTION_CLASSES], [[2, 1, 2, 0, 0, 0]])


@pytest.mark.parametrize("threshold, expected", [(0.45, 4), (0.9, 5)])
def test_nms_threshold(threshold, expected):
    # At 0.9 the a0/a1 overlap (0.818) is below the threshold, so a1's class 1 box survives.
    config = presets.get("ssd300_vgg16", 2, score_threshold=0.05, max_detections=6, nms_iou_threshold=threshold)
    np.testing.assert_array_equal(_run(PROBS[None], config)[fields.NUM_DETECTIONS], [expected])


def test_clip_boxes_before_nms_changes_which_box_survives():
    """Two boxes of one class, A x -0.8..0.6 and B x 0..0.6 (y 0..1 both). Unclipped (Caffe) their IoU is
    0.6 / 1.4 = 0.43 <= 0.45 and both stay; clipped first (torchvision) A becomes B: IoU 1, one stays."""
    config = dataclasses.replace(presets.get("ssd300_vgg16", 1), score_threshold=0.01,
                                 variances=(1.0, 1.0, 1.0, 1.0))
    anchors = np.array([[0.0, -0.8, 1.0, 0.6], [0.0, 0.0, 1.0, 0.6]], np.float32)
    codes = np.zeros([1, 2, 4], np.float32)                       # decode to the anchors themselves
    logits = np.log(np.array([[[0.1, 0.9], [0.2, 0.8]]], np.float32))
    kept = {}
    for clip in (False, True):
        out = postprocess.postprocess(logits, codes, anchors,
                                      dataclasses.replace(config, clip_boxes_before_nms=clip))
        kept[clip] = int(out[fields.NUM_DETECTIONS][0])
    assert kept == {False: 2, True: 1}
