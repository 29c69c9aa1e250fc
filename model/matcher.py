"""Anchor <-> ground-truth matching (paper §2.2 "Matching strategy").

Two rules, chosen by `SSDConfig.matching`; both end with the same per-anchor step.

CAFFE_BIPARTITE (the default): Caffe SSD's `MatchBBox` with `match_type: PER_PREDICTION`
(weiliu89/caffe, branch ssd, src/caffe/util/bbox_util.cpp), as the released models were trained.
  1. Greedy bipartite matching: repeatedly take the globally highest-IoU pair of an unmatched valid box
     and an unmatched anchor, and match them; stop when no pair with IoU > 1e-6 is left (Caffe stores
     only overlaps above 1e-6). Every box that overlaps any anchor therefore gets an anchor of its own:
     two boxes sharing a best anchor no longer leave one of them untrained. A box that overlaps no
     anchor at all (IoU <= 1e-6 everywhere) gets none.
  2. Every other anchor takes its best valid box if that IoU >= threshold, else NO_MATCH (background).

SSD_PYTORCH: amdegroot/ssd.pytorch `layers/box_utils.py` `match`, kept for comparison.
  1. Every valid box claims its highest-IoU anchor, even at IoU 0; when several boxes claim one anchor
     the HIGHEST box index wins (ssd.pytorch's loop overwrites), so the others may end with no anchor.
  2. As above.

Padding rows (gt_valid False) never match and never claim. Images with zero boxes (G = 0 or all padding)
are legal: every anchor is NO_MATCH. The matcher only matches: it sees IoUs, never boxes or labels.

Cost of step 1 of CAFFE_BIPARTITE: when round r picks box g, at most r - 1 < G anchors are taken, so g's
best free anchor is among its top-G anchors. The greedy rounds therefore run on a [G, G] candidate set
per image (tf.math.top_k over [G, A] once), in a `tf.while_loop` of at most G rounds; no Python loop,
so it runs inside tf.data. When the boxes' best anchors are all distinct (the common case) the result
equals SSD_PYTORCH's forced claims, boxes that overlap nothing aside; such images are found with a
[G, G] comparison and skip the candidates and the rounds.

Ties, between EXACTLY equal float32 IoUs (what the index rules below decide):
* bipartite step: the lowest anchor index, then the lowest box index (Caffe's strict `>` scanning
  anchors, then boxes, in ascending order);
* SSD_PYTORCH's claim: the lowest anchor index;
* step 2: the lowest box index.
Geometric ties (a box centred exactly between two anchors of equal shape) are seldom exact in float32:
the anchors' coordinates and the IoU arithmetic round differently at each position, so float rounding,
not the index, usually decides which anchor wins such a tie, in Caffe and ssd.pytorch as here.
"""

import tensorflow as tf

# Value of matched_gt_index for an anchor that is background.
NO_MATCH = -1

# SSDConfig.matching values.
CAFFE_BIPARTITE = "caffe_bipartite"
SSD_PYTORCH = "ssd_pytorch"
RULES = (CAFFE_BIPARTITE, SSD_PYTORCH)

# IoU given to padding rows: below any real IoU (>= 0), so padding is never anyone's best box.
_PADDING_IOU = -1.0
# Caffe's MatchBBox keeps only overlaps above this for the bipartite step.
_MIN_BIPARTITE_IOU = 1e-6


def _max_and_first_argmax(values, axis):
    """Maximum along `axis` and its index, the lowest index on ties (tf.argmax does not promise which)."""
    size = tf.shape(values, out_type=tf.int32)[axis]
    rank = values.shape.rank
    index_shape = [1] * rank
    index_shape[axis] = -1
    indices = tf.reshape(tf.range(size, dtype=tf.int32), index_shape)
    maximum = tf.reduce_max(values, axis=axis, keepdims=True)
    first = tf.reduce_min(tf.where(tf.equal(values, maximum), indices, size), axis=axis)
    return tf.squeeze(maximum, axis), first


def _first_argmax(values, axis):
    """Index of the maximum along `axis`, lowest index on ties."""
    return _max_and_first_argmax(values, axis)[1]


def _claims_to_anchors(gt_anchor, valid, num_anchors):
    """[B, A] box index claiming each anchor (highest box index if several), NO_MATCH if none.

    gt_anchor: int32 [B, G'], the anchor each box claims; rows with valid False or gt_anchor < 0 claim none.
    """
    claims = tf.logical_and(
        tf.equal(gt_anchor[:, :, None], tf.range(num_anchors, dtype=tf.int32)[None, None, :]),
        valid[:, :, None])                                                        # [B, G', A]
    gt_index = tf.range(tf.shape(gt_anchor)[1], dtype=tf.int32)[None, :, None]    # [1, G', 1]
    return tf.reduce_max(tf.where(claims, gt_index, NO_MATCH), axis=1)            # [B, A]


def _greedy_rounds(iou):
    """Caffe's greedy bipartite step, round by round on the top-G candidates: int32 [B, G]."""
    num_gt = tf.shape(iou)[1]
    num_anchors = tf.shape(iou)[2]
    k = tf.minimum(num_gt, num_anchors)
    # top_k returns the lower index first among equal values: each row's candidates in the tie order.
    top_iou, top_anchor = tf.math.top_k(iou, k=k, sorted=True)                   # [B, G, K]
    gt_of = tf.broadcast_to(tf.range(num_gt, dtype=tf.int32)[None, :, None], tf.shape(top_anchor))
    alive = top_iou > _MIN_BIPARTITE_IOU                                          # [B, G, K]
    gt_anchor = tf.fill(tf.shape(iou)[:2], NO_MATCH)                              # [B, G]
    gt_anchor.set_shape(iou.shape[:2])
    gt_anchor_shape, alive_shape = gt_anchor.shape, alive.shape

    def one_round(round_index, alive, gt_anchor):
        values = tf.where(alive, top_iou, _PADDING_IOU)
        best = tf.reduce_max(values, axis=[1, 2], keepdims=True)                  # [B, 1, 1]
        is_best = tf.logical_and(alive, tf.equal(values, best))
        anchor = tf.reduce_min(tf.where(is_best, top_anchor, num_anchors), axis=[1, 2])  # [B]
        is_best = tf.logical_and(is_best, tf.equal(top_anchor, anchor[:, None, None]))
        gt = tf.reduce_min(tf.where(is_best, gt_of, num_gt), axis=[1, 2])          # [B]
        found = tf.reduce_any(alive, axis=[1, 2])                                  # [B]
        picked = tf.logical_and(found[:, None], tf.equal(tf.range(num_gt)[None, :], gt[:, None]))
        gt_anchor = tf.where(picked, anchor[:, None], gt_anchor)
        # The matched box and the taken anchor leave the candidate set.
        alive = tf.logical_and(alive, tf.not_equal(gt_of, gt[:, None, None]))
        alive = tf.logical_and(alive, tf.not_equal(top_anchor, anchor[:, None, None]))
        gt_anchor.set_shape(gt_anchor_shape)                                       # keep static shapes
        alive.set_shape(alive_shape)
        return round_index + 1, alive, gt_anchor

    def more(round_index, alive, gt_anchor):
        return tf.logical_and(round_index < num_gt, tf.reduce_any(alive))

    _, _, gt_anchor = tf.while_loop(more, one_round, (tf.constant(0), alive, gt_anchor),
                                    maximum_iterations=num_gt)
    return gt_anchor


def _bipartite_anchor_per_gt(iou):
    """Caffe's greedy bipartite step: int32 [B, G], each box's anchor, or NO_MATCH.

    iou: float [B, G, A] with padding rows already at _PADDING_IOU.
    In an image where no two boxes that overlap anything share a best anchor, the greedy rounds would
    give every box its best anchor: that is taken directly, and only the other images (gathered into
    a smaller batch) go through the top-G candidates and the rounds.
    """
    best_iou, best_anchor = _max_and_first_argmax(iou, axis=2)                    # [B, G]
    overlaps = best_iou > _MIN_BIPARTITE_IOU                                      # [B, G]
    both = tf.logical_and(overlaps[:, :, None], overlaps[:, None, :])             # [B, G, G]
    same = tf.logical_and(tf.equal(best_anchor[:, :, None], best_anchor[:, None, :]), both)
    shared = tf.reduce_any(tf.linalg.set_diag(same, tf.zeros_like(same[:, :, 0])), axis=[1, 2])  # [B]
    direct = tf.where(overlaps, best_anchor, NO_MATCH)                            # [B, G]
    images = tf.where(shared)                                                     # [B', 1] int64
    rounds = _greedy_rounds(tf.gather_nd(iou, images))                            # [B', G]
    return tf.tensor_scatter_nd_update(direct, images, rounds)


def match(iou_gt_by_anchor, gt_valid, threshold, rule=CAFFE_BIPARTITE):
    """Matched ground-truth index per anchor.

    Args:
      iou_gt_by_anchor: float [B, G, A], IoU of gt box g with anchor a. G may be 0.
      gt_valid: bool [B, G], False for padding rows.
      threshold: IoU at or above which an unclaimed anchor takes its best box (config.match_threshold).
      rule: CAFFE_BIPARTITE or SSD_PYTORCH (config.matching), module docstring.

    Returns:
      int32 [B, A]: the gt index in [0, G) matched to each anchor, or NO_MATCH.
    """
    if rule not in RULES:
        raise ValueError(f"unknown matching rule {rule!r}; known: {', '.join(RULES)}")
    iou_gt_by_anchor = tf.convert_to_tensor(iou_gt_by_anchor, tf.float32)
    gt_valid = tf.convert_to_tensor(gt_valid, tf.bool)
    batch = tf.shape(iou_gt_by_anchor)[0]
    num_anchors = tf.shape(iou_gt_by_anchor)[2]
    # One always-invalid sentinel row at index G keeps every reduction over G non-empty when G = 0.
    iou = tf.concat([iou_gt_by_anchor, tf.fill([batch, 1, num_anchors], _PADDING_IOU)], axis=1)
    valid = tf.concat([gt_valid, tf.zeros([batch, 1], tf.bool)], axis=1)          # [B, G+1]
    iou = tf.where(valid[:, :, None], iou, _PADDING_IOU)                          # [B, G+1, A]

    # Step 2: best gt per anchor, kept only at or above the threshold.
    best_iou, best_gt = _max_and_first_argmax(iou, axis=1)                        # [B, A]
    matched = tf.where(best_iou >= threshold, best_gt, NO_MATCH)

    # Step 1: each box's own anchor.
    if rule == CAFFE_BIPARTITE:
        gt_anchor = _bipartite_anchor_per_gt(iou)                                 # [B, G+1]
        valid = tf.logical_and(valid, gt_anchor != NO_MATCH)
    else:
        gt_anchor = _first_argmax(iou, axis=2)                                    # [B, G+1]
    claimer = _claims_to_anchors(gt_anchor, valid, num_anchors)                   # [B, A]
    return tf.where(claimer != NO_MATCH, claimer, matched)
