"""SSD box coding: boxes <-> regression codes relative to anchors.

A box coder does not match: it encodes whatever box it is given against each anchor, position by
position. Matching (which box goes with which anchor) is `model.matcher`'s job.

Codes are [ty, tx, th, tw] with variances v = (0.1, 0.1, 0.2, 0.2) (Caffe `CENTER_SIZE` coding with
`variance_encoded_in_target: false`, ssd_pascal.py):

    ty = (cy - cy_a) / (h_a * v0)    tx = (cx - cx_a) / (w_a * v1)
    th = log(h / h_a) / v2           tw = log(w / w_a) / v3

Law (tested on random boxes): decode(encode(boxes, anchors), anchors) == boxes.

Shapes: boxes / codes [..., A, 4] broadcast against anchors [A, 4]; boxes are yxyx.
"""

import math

import tensorflow as tf

from model import box_ops
from model.presets import VARIANCES


# Degenerate boxes (zero height or width, e.g. a ground-truth box squashed by a crop or a padding row)
# have log(0) = -inf codes; clamping the size first keeps every code finite.
MIN_SIZE = 1e-6

# Largest log size ratio decode will exponentiate: a box at most 1000/16 times its anchor (the bound
# detectron2 uses), so a wild prediction early in training cannot overflow to inf.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def encode(boxes, anchors, variances=VARIANCES):
    """Boxes [..., A, 4] yxyx, anchors [A, 4] yxyx -> codes [..., A, 4] [ty, tx, th, tw], float32."""
    boxes = tf.cast(boxes, tf.float32)
    anchors = tf.cast(anchors, tf.float32)
    cy, cx, h, w = tf.unstack(box_ops.yxyx_to_centers(boxes), 4, axis=-1)
    cy_a, cx_a, h_a, w_a = tf.unstack(box_ops.yxyx_to_centers(anchors), 4, axis=-1)
    h = tf.maximum(h, MIN_SIZE)
    w = tf.maximum(w, MIN_SIZE)
    return tf.stack([
        (cy - cy_a) / (h_a * variances[0]),
        (cx - cx_a) / (w_a * variances[1]),
        tf.math.log(h / h_a) / variances[2],
        tf.math.log(w / w_a) / variances[3],
    ], axis=-1)


def decode(codes, anchors, variances=VARIANCES):
    """Codes [..., A, 4] [ty, tx, th, tw], anchors [A, 4] yxyx -> boxes [..., A, 4] yxyx, float32.

    Boxes are not clipped (post-processing clips); th/tw are clipped at MAX_LOG_SCALE before exp.
    """
    codes = tf.cast(codes, tf.float32)
    anchors = tf.cast(anchors, tf.float32)
    ty, tx, th, tw = tf.unstack(codes, 4, axis=-1)
    cy_a, cx_a, h_a, w_a = tf.unstack(box_ops.yxyx_to_centers(anchors), 4, axis=-1)
    cy = ty * variances[0] * h_a + cy_a
    cx = tx * variances[1] * w_a + cx_a
    h = tf.exp(tf.minimum(th * variances[2], MAX_LOG_SCALE)) * h_a
    w = tf.exp(tf.minimum(tw * variances[3], MAX_LOG_SCALE)) * w_a
    return box_ops.centers_to_yxyx(tf.stack([cy, cx, h, w], axis=-1))
