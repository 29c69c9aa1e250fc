"""Anchor <-> ground-truth matching, the Caffe / ssd.pytorch rule (paper §2.2 "Matching strategy").

1. Every valid ground-truth box claims the anchor with its highest IoU ("forced" match), even when that
   IoU is below the threshold, even when it is 0, so no object goes untrained.
2. Every other anchor takes its best valid ground-truth box if that IoU >= threshold, else NO_MATCH
   (background).

Padding rows (gt_valid False) never match and never claim. Images with zero boxes (G = 0 or all padding)
are legal: every anchor is NO_MATCH. Difficult boxes are matched like any other; the caller decides
whether to pass them. The matcher only matches: it sees IoUs, never boxes or labels.

Ties are broken deterministically, without relying on scatter order:
* an argmax tie (equal IoUs) goes to the LOWEST index (anchor for a forced claim, gt for step 2);
* when several gt boxes claim the same anchor, the HIGHEST gt index wins, as in ssd.pytorch's loop
  where the later box overwrites the earlier one.
"""

import tensorflow as tf

# Value of matched_gt_index for an anchor that is background.
NO_MATCH = -1

# IoU given to padding rows: below any real IoU (>= 0), so padding is never anyone's best box.
_PADDING_IOU = -1.0


def _first_argmax(values, axis):
    """Index of the maximum along `axis`, lowest index on ties (tf.argmax does not promise which)."""
    size = tf.shape(values, out_type=tf.int32)[axis]
    rank = values.shape.rank
    index_shape = [1] * rank
    index_shape[axis] = -1
    indices = tf.reshape(tf.range(size, dtype=tf.int32), index_shape)
    is_max = tf.equal(values, tf.reduce_max(values, axis=axis, keepdims=True))
    return tf.reduce_min(tf.where(is_max, indices, size), axis=axis)


def match(iou_gt_by_anchor, gt_valid, threshold):
    """Matched ground-truth index per anchor.

    Args:
      iou_gt_by_anchor: float [B, G, A], IoU of gt box g with anchor a. G may be 0.
      gt_valid: bool [B, G], False for padding rows.
      threshold: IoU at or above which an unclaimed anchor takes its best box (config.match_threshold).

    Returns:
      int32 [B, A]: the gt index in [0, G) matched to each anchor, or NO_MATCH.
    """
    iou_gt_by_anchor = tf.convert_to_tensor(iou_gt_by_anchor, tf.float32)
    gt_valid = tf.convert_to_tensor(gt_valid, tf.bool)
    batch = tf.shape(iou_gt_by_anchor)[0]
    num_anchors = tf.shape(iou_gt_by_anchor)[2]
    # One always-invalid sentinel row at index G keeps every reduction over G non-empty when G = 0.
    iou = tf.concat([iou_gt_by_anchor, tf.fill([batch, 1, num_anchors], _PADDING_IOU)], axis=1)
    valid = tf.concat([gt_valid, tf.zeros([batch, 1], tf.bool)], axis=1)          # [B, G+1]
    iou = tf.where(valid[:, :, None], iou, _PADDING_IOU)                          # [B, G+1, A]

    # Step 2: best gt per anchor, kept only at or above the threshold.
    best_gt = _first_argmax(iou, axis=1)                                          # [B, A]
    best_iou = tf.reduce_max(iou, axis=1)                                         # [B, A]
    matched = tf.where(best_iou >= threshold, best_gt, NO_MATCH)

    # Step 1: forced claims. claims[b, g, a] is True when valid gt g's best anchor is a.
    best_anchor = _first_argmax(iou, axis=2)                                      # [B, G+1]
    claims = tf.logical_and(
        tf.equal(best_anchor[:, :, None], tf.range(num_anchors, dtype=tf.int32)[None, None, :]),
        valid[:, :, None])                                                        # [B, G+1, A]
    gt_index = tf.range(tf.shape(iou)[1], dtype=tf.int32)[None, :, None]          # [1, G+1, 1]
    claimer = tf.reduce_max(tf.where(claims, gt_index, NO_MATCH), axis=1)         # [B, A], highest g wins
    return tf.where(claimer != NO_MATCH, claimer, matched)
