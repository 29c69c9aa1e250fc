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
      config: SSDConfig; uses match_threshold, matching and variances.

    Returns:
      dict with CLS_TARGETS, BOX_TARGETS, NUM_POSITIVES (module docstring).
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_labels = tf.convert_to_tensor(gt_labels, tf.int32)
    gt_valid = tf.convert_to_tensor(gt_valid, tf.bool)
    anchors = tf.convert_to_tensor(anchors, tf.float32)

    iou_gt_by_anchor = box_ops.iou(gt_boxes, anchors)                               # [B, G, A]
    matched = matcher.match(iou_gt_by_anchor, gt_valid, config.match_threshold, config.matching)  # [B, A]
    positive = matched != matcher.NO_MATCH

    # Background anchors gather a zero box with label 0 appended at index G (also makes G = 0 legal).
    batch = tf.shape(gt_boxes)[0]
    boxes = tf.concat([gt_boxes, tf.zeros([batch, 1, 4])], axis=1)                  # [B, G+1, 4]
    labels = tf.concat([gt_labels, tf.fill([batch, 1], fields.BACKGROUND_CLASS)], axis=1)  # [B, G+1]
    index = tf.where(positive, matched, tf.shape(gt_boxes)[1])                      # [B, A]

    cls_targets = tf.gather(labels, index, batch_dims=1)                            # [B, A]
    matched_boxes = tf.gather(boxes, index, batch_dims=1)                           # [B, A, 4]
    codes = box_coder.encode(matched_boxes, anchors, config.variances)              # [B, A, 4]
    box_targets = tf.where(positive[..., None], codes, 0.0)
    return {
        fields.CLS_TARGETS: cls_targets,
        fields.BOX_TARGETS: box_targets,
        fields.NUM_POSITIVES: tf.reduce_sum(tf.cast(positive, tf.float32), axis=1),
    }
