import math

import numpy as np
import pytest
import tensorflow as tf

from model import losses

# One image, A = 4 anchors, C = 2 classes (3 logit columns).
LOGITS = [[0.0, 0.0, 0.0],    # anchor 0, positive (class 1): CE = log(3)
          [0.0, 1.0, 0.0],    # anchor 1, negative: CE = log(1 + e + 1) = log(2 + e) = 1.5514
          [2.0, 0.0, 0.0],    # anchor 2, negative: CE = log(e^2 + 2) - 2 = 0.2395 (easy)
          [0.0, 2.0, 0.0]]    # anchor 3, negative: CE = log(2 + e^2) = 2.2395 (hardest)
TARGETS = [1, 0, 0, 0]
CE = [math.log(3), math.log(2 + math.e), math.log(math.e ** 2 + 2) - 2, math.log(2 + math.e ** 2)]
# Positive's codes vs zero targets: smooth L1 of (0.5, -2, 0, 0) = 0.5*0.5^2 + (2 - 0.5) = 1.625.
CODES = [[0.5, -2.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]]
BOX_L1 = 1.625


def _loss(logits, codes, targets, box_targets=None, **kwargs):
    logits = np.asarray(logits, np.float32)
    box_targets = np.zeros(logits.shape[:2] + (4,), np.float32) if box_targets is None else box_targets
    out = losses.multibox_loss(logits, np.asarray(codes, np.float32), np.asarray(targets, np.int32),
                               box_targets, **kwargs)
    return {k: float(v) for k, v in out.items()}


@pytest.mark.parametrize("ratio, hard", [(1.0, [3]), (2.0, [3, 1]), (3.0, [3, 1, 2]), (10.0, [3, 1, 2])])
def test_hand_computed_loss(ratio, hard):
    out = _loss([LOGITS], [CODES], [TARGETS], negative_ratio=ratio)
    expected_cls = CE[0] + sum(CE[i] for i in hard)   # 1 positive -> k = min(ratio, 3 negatives)
    assert out["cls_loss"] == pytest.approx(expected_cls, rel=1e-5)
    assert out["box_loss"] == pytest.approx(BOX_L1, rel=1e-5)
    assert out["total_loss"] == pytest.approx(expected_cls + BOX_L1, rel=1e-5)
    assert out["num_positives"] == 1.0


def test_image_without_positives_adds_nothing():
    empty_logits = [[5.0, -3.0, 4.0]] * 4           # would be large CEs if mined
    out = _loss([LOGITS, empty_logits], [CODES, CODES], [TARGETS, [0, 0, 0, 0]], negative_ratio=1.0)
    assert out["cls_loss"] == pytest.approx(CE[0] + CE[3], rel=1e-5)
    assert out["box_loss"] == pytest.approx(BOX_L1, rel=1e-5)


def test_batch_without_any_positive_is_finite_zero():
    out = _loss([LOGITS], [CODES], [[0, 0, 0, 0]])
    assert out == {"cls_loss": 0.0, "box_loss": 0.0, "total_loss": 0.0, "num_positives": 0.0}


def test_scarce_negatives_clip_k():
    # 3 positives want 9 negatives; only anchor 3 is background, so k = 1.
    out = _loss([LOGITS], [CODES], [[1, 2, 1, 0]], negative_ratio=3.0)
    # anchor 0 class 1: log 3; anchor 1 class 2 (logit 0): log(2 + e); anchor 2 class 1 (logit 0): log(e^2 + 2)
    ce_pos = [math.log(3), math.log(2 + math.e), math.log(math.e ** 2 + 2)]
    assert out["cls_loss"] == pytest.approx((sum(ce_pos) + CE[3]) / 3, rel=1e-5)
    assert out["num_positives"] == 3.0


def test_hard_negative_mask_per_image_counts():
    loss = np.array([[0.1, 0.9, 0.5, 0.7, 0.3],
                     [0.8, 0.1, 0.2, 0.3, 0.4]], np.float32)
    positive = np.array([[True, False, False, False, False],
                         [False] * 5])
    mask = losses.hard_negative_mask(loss, positive, 2.0).numpy()
    np.testing.assert_array_equal(mask, [[False, True, False, True, False], [False] * 5])


def test_global_normalizer_makes_replica_sum_equal_single_batch():
    second_targets = [2, 1, 0, 0]
    box_targets = np.random.default_rng(0).normal(size=(2, 4, 4)).astype(np.float32)
    whole = _loss([LOGITS, LOGITS], [CODES, CODES], [TARGETS, second_targets], box_targets)
    global_positives = 3.0
    replicas = [_loss([LOGITS], [CODES], [t], box_targets[i:i + 1], normalizer=global_positives)
                for i, t in enumerate([TARGETS, second_targets])]
    for key in ("cls_loss", "box_loss", "total_loss"):
        assert sum(r[key] for r in replicas) == pytest.approx(whole[key], rel=1e-5)


def test_gradient_flows_only_to_selected_anchors_and_mixed_precision():
    logits = tf.constant([LOGITS], tf.float16)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        out = losses.multibox_loss(logits, tf.constant([CODES]), tf.constant([TARGETS]),
                                   tf.zeros([1, 4, 4]), negative_ratio=1.0)
    assert out["total_loss"].dtype == tf.float32
    grad = tape.gradient(out["total_loss"], logits).numpy()
    assert np.all(np.isfinite(grad))
    assert np.abs(grad[0, [0, 3]]).sum() > 0
    np.testing.assert_array_equal(grad[0, [1, 2]], 0.0)   # unmined negatives get no gradient
