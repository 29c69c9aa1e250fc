"""Target assignment: ground truth + anchors -> per-anchor training targets.

Composes the three single-purpose pieces: IoU (`box_ops`), matching (`matcher`), coding (`box_coder`).
Pure TensorFlow, no Python loops over the batch or boxes, so it runs inside tf.data map functions
(graph mode) and accepts G = 0 (gt_boxes of shape [B, 0, 4]).

COCO crowd boxes (`iscrowd`, one box around a group of objects) are neither positives nor negatives.
They never take part in matching (they are passed to the matcher as invalid rows, so they claim no
anchor and no anchor takes them), and every anchor that matched no box but lies mostly inside a crowd
box gets IGNORE_CLASS, which the loss leaves out of the cross-entropy and out of hard-negative
mining. "Mostly inside" is intersection over the ANCHOR's area >= CROWD_IOA_THRESHOLD (0.5), not IoU:
a small anchor entirely inside a large crowd region has a tiny IoU with it, yet it most likely sits
on an unannotated object, and mining it as background would teach the net to miss such objects.
The same measure is how pycocotools matches a detection to a crowd region (intersection over the
detection's area; a match makes the detection ignored, neither true nor false positive), and 0.5 is
the loosest of its IoU thresholds: an anchor whose detection COCOeval would ignore at IoU 0.5 is not
trained as background. (py-faster-rcnn's lib/datasets/coco.py `_filter_crowd_proposals` makes
proposals neither foreground nor background by the same measure, at 0.7; we take COCOeval's 0.5 for
the reason above, which ignores somewhat more anchors at a crowd region's border.)

Output dict (keys from dataset/fields.py):
  CLS_TARGETS   int32   [B, A]     0 (background), the matched box's label 1..C, or IGNORE_CLASS
  BOX_TARGETS   float32 [B, A, 4]  matched box encoded against its anchor; zeros for background
  NUM_POSITIVES float32 [B]        anchors with a matched box
"""

import tensorflow as tf

from dataset import fields
from model import box_coder, box_ops, matcher

# Intersection over the anchor's area with a crowd box at or above which an unmatched anchor is
# ignored (see the module docstring for why this measure and this value).
CROWD_IOA_THRESHOLD = 0.5


def intersection_over_anchor_area(gt_boxes, anchors):
    """gt_boxes [B, G, 4], anchors [A, 4] (yxyx) -> [B, G, A]: intersection / area of the anchor."""
    g = gt_boxes[..., :, None, :]                                                   # [B, G, 1, 4]
    a = anchors[None, None, :, :]                                                   # [1, 1, A, 4]
    inter_h = tf.maximum(tf.minimum(g[..., 2], a[..., 2]) - tf.maximum(g[..., 0], a[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(g[..., 3], a[..., 3]) - tf.maximum(g[..., 1], a[..., 1]), 0.0)
    return tf.math.divide_no_nan(inter_h * inter_w, box_ops.area(anchors)[None, None, :])


def encode_targets(gt_boxes, gt_labels, gt_valid, anchors, config, gt_is_crowd=None):
    """Per-anchor targets for a batch.

    Args:
      gt_boxes: float [B, G, 4] normalized yxyx; padding rows have any value.
      gt_labels: int32 [B, G], 1..C for valid rows.
      gt_valid: bool [B, G], False for padding rows.
      anchors: float [A, 4] normalized yxyx (`model.anchors.generate(config)`).
      config: SSDConfig; uses match_threshold and variances.
      gt_is_crowd: optional bool [B, G], True for COCO crowd boxes (see the module docstring).

    Returns:
      dict with CLS_TARGETS, BOX_TARGETS, NUM_POSITIVES (module docstring).
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_labels = tf.convert_to_tensor(gt_labels, tf.int32)
    gt_valid = tf.convert_to_tensor(gt_valid, tf.bool)
    anchors = tf.convert_to_tensor(anchors, tf.float32)

    crowd = tf.zeros_like(gt_valid)
    if gt_is_crowd is not None:
        crowd = tf.logical_and(gt_valid, tf.convert_to_tensor(gt_is_crowd, tf.bool))  # [B, G]
    matchable = tf.logical_and(gt_valid, tf.logical_not(crowd))                    # [B, G]

    iou_gt_by_anchor = box_ops.iou(gt_boxes, anchors)                               # [B, G, A]
    matched = matcher.match(iou_gt_by_anchor, matchable, config.match_threshold)    # [B, A]
    positive = matched != matcher.NO_MATCH

    # Background anchors gather a zero box with label 0 appended at index G (also makes G = 0 legal).
    batch = tf.shape(gt_boxes)[0]
    boxes = tf.concat([gt_boxes, tf.zeros([batch, 1, 4])], axis=1)                  # [B, G+1, 4]
    labels = tf.concat([gt_labels, tf.fill([batch, 1], fields.BACKGROUND_CLASS)], axis=1)  # [B, G+1]
    index = tf.where(positive, matched, tf.shape(gt_boxes)[1])                      # [B, A]

    cls_targets = tf.gather(labels, index, batch_dims=1)                            # [B, A]
    if gt_is_crowd is not None:
        ioa = intersection_over_anchor_area(gt_boxes, anchors)                      # [B, G, A]
        in_crowd = tf.reduce_any(tf.logical_and(crowd[:, :, None], ioa >= CROWD_IOA_THRESHOLD), axis=1)
        ignored = tf.logical_and(in_crowd, tf.logical_not(positive))                # [B, A]
        cls_targets = tf.where(ignored, fields.IGNORE_CLASS, cls_targets)
    matched_boxes = tf.gather(boxes, index, batch_dims=1)                           # [B, A, 4]
    codes = box_coder.encode(matched_boxes, anchors, config.variances)              # [B, A, 4]
    box_targets = tf.where(positive[..., None], codes, 0.0)
    return {
        fields.CLS_TARGETS: cls_targets,
        fields.BOX_TARGETS: box_targets,
        fields.NUM_POSITIVES: tf.reduce_sum(tf.cast(positive, tf.float32), axis=1),
    }
