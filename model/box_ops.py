"""Box geometry in TensorFlow: format conversion and pairwise IoU.

Boxes are [ymin, xmin, ymax, xmax] on the last axis (TensorFlow order, normalized or not: these ops do
not care about the unit). Centre form is [cy, cx, h, w]. Every op broadcasts over leading axes.
"""

import tensorflow as tf


def yxyx_to_centers(boxes):
    """[..., 4] yxyx -> [..., 4] [cy, cx, h, w]."""
    boxes = tf.convert_to_tensor(boxes)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
    return tf.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], axis=-1)


def centers_to_yxyx(centers):
    """[..., 4] [cy, cx, h, w] -> [..., 4] yxyx."""
    centers = tf.convert_to_tensor(centers)
    cy, cx, h, w = tf.unstack(centers, 4, axis=-1)
    return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def area(boxes):
    """[..., 4] yxyx -> [...]; inverted boxes count as area 0."""
    boxes = tf.convert_to_tensor(boxes)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
    return tf.maximum(ymax - ymin, 0) * tf.maximum(xmax - xmin, 0)


def intersection(boxes_a, boxes_b):
    """Pairwise intersection area: boxes_a [..., N, 4], boxes_b [..., M, 4] -> [..., N, M] (0 if disjoint).

    Leading axes broadcast as in `iou`.
    """
    boxes_a = tf.convert_to_tensor(boxes_a)
    boxes_b = tf.convert_to_tensor(boxes_b, dtype=boxes_a.dtype)
    a = boxes_a[..., :, None, :]                                      # [..., N, 1, 4]
    b = boxes_b[..., None, :, :]                                      # [..., 1, M, 4]
    inter_h = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0)
    inter_w = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0)
    return inter_h * inter_w


def iou(boxes_a, boxes_b):
    """Pairwise intersection over union: boxes_a [..., N, 4], boxes_b [..., M, 4] -> [..., N, M].

    Leading axes broadcast (e.g. gt [B, G, 4] against anchors [A, 4] gives [B, G, A]). A pair whose union
    is empty (two zero-area boxes) has IoU 0, never NaN, so padding boxes are harmless.
    """
    boxes_a = tf.convert_to_tensor(boxes_a)
    boxes_b = tf.convert_to_tensor(boxes_b, dtype=boxes_a.dtype)
    inter = intersection(boxes_a, boxes_b)                            # [..., N, M]
    union = area(boxes_a)[..., :, None] + area(boxes_b)[..., None, :] - inter
    return tf.math.divide_no_nan(inter, union)
