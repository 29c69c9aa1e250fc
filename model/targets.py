"""Target assignment: ground truth + anchors -> per-anchor training targets.

Composes the three single-purpose pieces: IoU (`box_ops`), matching (`matcher`), coding (`box_coder`).
Pure TensorFlow, no Python loops over the batch or boxes, so it runs inside tf.data map functions
(graph mode) and accepts G = 0 (gt_boxes of shape [B, 0, 4]).

Output dict (keys from dataset/fields.py):
  CLS_TARGETS   int32   [B, A]     0 (background) or the matched box's label 1..C
  BOX_TARGETS   float32 [B, A, 4]  matched box encoded against its anchor; zeros for background
  NUM_POSITIVES float32 [B]        anchors with a matched box
"""

import tensorflow as tf

from dataset import fields
from model import box_coder, box_ops, matcher


def encode_targets(gt_boxes, gt_labels, gt_valid, anchors, config):
    """Per-anchor targets for a batch.

    Args:
      gt_boxes: float [B, G, 4] normalized yxyx; padding rows have any value.
      gt_labels: int32 [B, G], 1..C for valid rows.
      gt_valid: bool [B, G], False for padding rows.
      anchors: float [A, 4] normalized yxyx (`model.anchors.generate(config)`).
      config: SSDConfig; uses match_threshold and variances.

    Returns:
      dict with CLS_TARGETS, BOX_TARGETS, NUM_POSITIVES (module docstring).
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_labels = tf.convert_to_tensor(gt_labels, tf.int32)
    gt_valid = tf.convert_to_tensor(gt_valid, tf.bool)
    anchors = tf.convert_to_tensor(anchors, tf.float32)

    iou_gt_by_anchor = box_ops.iou(gt_boxes, anchors)                               # [B, G, A]
    matched = matcher.match(iou_gt_by_anchor, gt_valid, config.match_threshold)     # [B, A]
    return _targets_at_positives(gt_boxes, gt_labels, matched, anchors, config.variances)


def _targets_at_positives(gt_boxes, gt_labels, matched, anchors, variances):
    """Targets from the matcher's output, computed at the positive anchors only.

    A few dozen of the B x A anchors are positive (about 20 per VOC image of 8,732), so labels and box
    codes are gathered and encoded there, [P] and [P, 4], and scattered into zeros: background is
    label 0 (fields.BACKGROUND_CLASS) with a zero box target. Gathering a box for every anchor and
    encoding all B x A of them cost 60% of encode_targets at B = 32 (benchmarks/input_pipeline.py
    --boxes_per_image; the README's speed section has the figures).
    """
    positive = matched != matcher.NO_MATCH                                          # [B, A]
    where = tf.where(positive)                                                      # [P, 2] (b, a)
    image_index = tf.cast(where[:, 0], tf.int32)                                    # [P]
    anchor_index = tf.cast(where[:, 1], tf.int32)                                   # [P]
    gt_index = tf.stack([image_index, tf.gather_nd(matched, where)], axis=1)        # [P, 2] (b, g)
    codes = box_coder.encode(tf.gather_nd(gt_boxes, gt_index), tf.gather(anchors, anchor_index),
                             variances)                                             # [P, 4]
    shape = tf.shape(matched, out_type=tf.int64)
    # tf.where lists each (b, a) once, so the scatter has no duplicate index to resolve.
    cls_targets = tf.scatter_nd(where, tf.gather_nd(gt_labels, gt_index), shape)    # [B, A]
    box_targets = tf.scatter_nd(where, codes, tf.concat([shape, [4]], axis=0))      # [B, A, 4]
    return {
        fields.CLS_TARGETS: cls_targets,
        fields.BOX_TARGETS: box_targets,
        fields.NUM_POSITIVES: tf.reduce_sum(tf.cast(positive, tf.float32), axis=1),
    }
