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
That is config.crowd_boxes == CROWD_IGNORE, the default. CROWD_POSITIVE trains crowd boxes as ordinary
boxes, as the MLPerf SSD-ResNet34 reference does (its COCODetection keeps every annotation and its
Encoder never reads iscrowd); the ssd300_resnet34 preset sets it.

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
# config.crowd_boxes values (module docstring).
CROWD_IGNORE, CROWD_POSITIVE = "ignore", "positive"
CROWD_RULES = (CROWD_IGNORE, CROWD_POSITIVE)


def intersection_over_anchor_area(gt_boxes, anchors):
    """gt_boxes [..., G, 4], anchors [A, 4] (yxyx) -> [..., G, A]: intersection / area of the anchor."""
    return tf.math.divide_no_nan(box_ops.intersection(gt_boxes, anchors), box_ops.area(anchors))


def encode_targets(gt_boxes, gt_labels, gt_valid, anchors, config, gt_is_crowd=None):
    """Per-anchor targets for a batch.

    The real boxes are taken out of the padded batch first ([P, 4], P = the valid rows), and IoU,
    matching (matcher.match_boxes) and the crowd test run on those alone, so the [P, A] work follows
    the boxes the batch holds rather than B x its largest count (the padded form wastes the ratio of a
    batch's largest count to its mean count), and crowd boxes' [Q, A] test costs nothing when there
    are none. Measured in the training pipeline: the README's "Input speed" section.

    Args:
      gt_boxes: float [B, G, 4] normalized yxyx; padding rows have any value.
      gt_labels: int32 [B, G], 1..C for valid rows.
      gt_valid: bool [B, G], False for padding rows.
      anchors: float [A, 4] normalized yxyx (`model.anchors.generate(config)`).
      config: SSDConfig; uses match_threshold, matching, variances and crowd_boxes.
      gt_is_crowd: optional bool [B, G], True for COCO crowd boxes (see the module docstring; under
        CROWD_POSITIVE they are ordinary boxes).

    Returns:
      dict with CLS_TARGETS, BOX_TARGETS, NUM_POSITIVES (module docstring).
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_labels = tf.convert_to_tensor(gt_labels, tf.int32)
    gt_valid = tf.convert_to_tensor(gt_valid, tf.bool)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    batch_size = tf.shape(gt_boxes)[0]
    crowd_rule = config.crowd_boxes
    if crowd_rule not in CROWD_RULES:
        raise ValueError(f"unknown crowd_boxes rule {crowd_rule!r}; known: {', '.join(CROWD_RULES)}")
    if crowd_rule == CROWD_POSITIVE:
        gt_is_crowd = None

    crowd = tf.zeros_like(gt_valid)
    if gt_is_crowd is not None:
        crowd = tf.logical_and(gt_valid, tf.convert_to_tensor(gt_is_crowd, tf.bool))  # [B, G]
    rows, boxes, matched = match_real_boxes(gt_boxes, tf.logical_and(gt_valid, tf.logical_not(crowd)),
                                            anchors, config)
    targets = _targets_at_positives(boxes, tf.gather_nd(gt_labels, rows), matched, anchors, config.variances)
    if gt_is_crowd is not None:
        crowd_rows = tf.where(crowd)                                                # [Q, 2]
        inside = intersection_over_anchor_area(tf.gather_nd(gt_boxes, crowd_rows), anchors) >= CROWD_IOA_THRESHOLD
        # An image without crowd boxes gets the lowest int32 from the segment max: not inside.
        in_crowd = tf.math.unsorted_segment_max(tf.cast(inside, tf.int32), tf.cast(crowd_rows[:, 0], tf.int32),
                                                batch_size) > 0                     # [B, A]
        ignored = tf.logical_and(in_crowd, matched == matcher.NO_MATCH)             # [B, A]
        targets[fields.CLS_TARGETS] = tf.where(ignored, fields.IGNORE_CLASS, targets[fields.CLS_TARGETS])
    return targets


def match_real_boxes(gt_boxes, matchable, anchors, config):
    """IoU and matching on the rows of a padded batch that take part: the first half of encode_targets.

    Args: gt_boxes float [B, G, 4]; matchable bool [B, G]; anchors [A, 4]; config as in encode_targets.
    Returns rows int64 [P, 2] (b, g) of the matchable rows, their boxes float [P, 4], and matched int32
    [B, A], each anchor's index p into them or matcher.NO_MATCH.
    """
    rows = tf.where(matchable)                                                      # [P, 2] (b, g)
    boxes = tf.gather_nd(gt_boxes, rows)                                            # [P, 4]
    image_index = tf.cast(rows[:, 0], tf.int32)                                     # [P], ascending
    matched = matcher.match_boxes(box_ops.iou(boxes, anchors), image_index, tf.shape(gt_boxes)[0],
                                  config.match_threshold, config.matching)          # [B, A], p
    return rows, boxes, matched


def _targets_at_positives(boxes, labels, matched, anchors, variances):
    """Targets from the matcher's output, computed at the positive anchors only.

    boxes [P, 4] and labels [P] are the flat real boxes that `matched` [B, A] indexes.
    A few dozen of the B x A anchors are positive (about 20 per VOC image of 8,732), so labels and box
    codes are gathered and encoded there, [N] and [N, 4], and scattered into zeros: background is
    label 0 (fields.BACKGROUND_CLASS) with a zero box target. Gathering a box for every anchor and
    encoding all B x A of them cost 60% of encode_targets at B = 32 (benchmarks/input_pipeline.py
    --boxes_per_image; the README's speed section has the figures).
    """
    positive = matched != matcher.NO_MATCH                                          # [B, A]
    where = tf.where(positive)                                                      # [N, 2] (b, a)
    anchor_index = tf.cast(where[:, 1], tf.int32)                                   # [N]
    box_index = tf.gather_nd(matched, where)                                        # [N]
    codes = box_coder.encode(tf.gather(boxes, box_index), tf.gather(anchors, anchor_index), variances)  # [N, 4]
    shape = tf.shape(matched, out_type=tf.int64)
    # tf.where lists each (b, a) once, so the scatter has no duplicate index to resolve.
    cls_targets = tf.scatter_nd(where, tf.gather(labels, box_index), shape)          # [B, A]
    box_targets = tf.scatter_nd(where, codes, tf.concat([shape, [4]], axis=0))      # [B, A, 4]
    return {
        fields.CLS_TARGETS: cls_targets,
        fields.BOX_TARGETS: box_targets,
        fields.NUM_POSITIVES: tf.reduce_sum(tf.cast(positive, tf.float32), axis=1),
    }
