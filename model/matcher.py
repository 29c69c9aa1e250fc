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

Layout: `match_boxes` is the matcher; it takes the batch's real boxes flat ([P, A] IoUs and each box's
image), so its cost follows the boxes a batch holds, not B x the batch's largest count (encode_targets
calls it). `match` is the padded form, [B, G, A] with a validity mask, for callers holding that: it
takes the valid rows out and calls match_boxes.

Cost of step 1 of CAFFE_BIPARTITE: when round r picks box g, at most r - 1 < G anchors are taken, so g's
best free anchor is among its top-G anchors (G: boxes in its image). The greedy rounds therefore run on
a [G, G] candidate set per image (tf.math.top_k over its boxes' IoU rows once), in a `tf.while_loop` of
at most G rounds; no Python loop, so it runs inside tf.data. When the boxes' best anchors are all
distinct (the common case) the result equals SSD_PYTORCH's forced claims, boxes that overlap nothing
aside; such images are found by sorting the (image, best anchor) keys and skip the candidates and the
rounds.

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


def _count(indices):
    """1 + the largest of int32 indices [N], 0 when N = 0."""
    return tf.reduce_max(tf.concat([[-1], indices], axis=0)) + 1


def _first_argmax_rows(values):
    """values [P, A] -> (max [P], index of its first occurrence [P] int32).

    tf.math.top_k with k = 1: it documents the lower index first among equal values, and it is one
    pass (measured 1.8 against 3.2 ms for max, compare and min over a [320, 8732] batch on one core).
    """
    top_value, top_index = tf.math.top_k(values, k=1)
    return top_value[:, 0], top_index[:, 0]


def _best_box_per_anchor(iou, image_index, batch_size, threshold):
    """Step 2: int32 [B, A], the box p of each anchor's image with the highest IoU (the lowest p on
    ties) where that IoU >= threshold, else NO_MATCH.

    The maximum is a sorted segment max over each image's rows (image_index is non-decreasing). Which
    box holds it is looked up at the anchors that pass only, a few dozen per image: the [P, A] compare
    and index reduction that finding it everywhere takes cost 4x the maximum itself when measured.
    """
    counts = tf.math.bincount(image_index, minlength=batch_size, maxlength=batch_size, dtype=tf.int32)  # [B]
    starts = tf.cumsum(counts, exclusive=True)                                    # [B]
    best_iou = tf.math.segment_max(iou, image_index)                              # [last image + 1, A]
    # Images after the last one with a box, and empty ones in between (segment_max gives them 0),
    # have no box at all: masked by their count.
    best_iou = tf.pad(best_iou, [[0, batch_size - tf.shape(best_iou)[0]], [0, 0]])  # [B, A]
    passes = tf.logical_and(best_iou >= threshold, (counts > 0)[:, None])
    where = tf.where(passes)                                                      # [N, 2] (b, a)
    image, anchor = tf.cast(where[:, 0], tf.int32), tf.cast(where[:, 1], tf.int32)
    slot = tf.range(tf.reduce_max(counts), dtype=tf.int32)[None, :]               # [1, M]
    in_image = slot < tf.gather(counts, image)[:, None]                           # [N, M]
    rows = tf.where(in_image, tf.gather(starts, image)[:, None] + slot, 0)        # [N, M]
    values = tf.gather_nd(iou, tf.stack([rows, tf.broadcast_to(anchor[:, None], tf.shape(rows))], axis=-1))
    is_best = tf.logical_and(in_image, tf.equal(values, tf.gather_nd(best_iou, where)[:, None]))
    first = tf.reduce_min(tf.where(is_best, slot, tf.shape(slot)[1]), axis=1)     # [N]
    best_box = tf.gather(starts, image) + first
    return tf.scatter_nd(where, best_box - NO_MATCH, tf.shape(best_iou, out_type=tf.int64)) + NO_MATCH


def _greedy_rounds(top_iou, top_anchor, num_anchors):
    """Caffe's greedy bipartite step, round by round on each box's top-K candidate anchors.

    top_iou float [B', G', K] (padding rows at _PADDING_IOU), top_anchor int32 [B', G', K] (each row's
    candidates in descending IoU, the lower anchor first among equal values, as tf.math.top_k returns
    them), num_anchors: scalar. Returns int32 [B', G'], each box's anchor or NO_MATCH.
    """
    num_gt = tf.shape(top_iou)[1]
    gt_of = tf.broadcast_to(tf.range(num_gt, dtype=tf.int32)[None, :, None], tf.shape(top_anchor))
    alive = top_iou > _MIN_BIPARTITE_IOU                                          # [B', G', K]
    gt_anchor = tf.fill(tf.shape(top_iou)[:2], NO_MATCH)                          # [B', G']
    gt_anchor.set_shape(top_iou.shape[:2])
    gt_anchor_shape, alive_shape = gt_anchor.shape, alive.shape

    def one_round(round_index, alive, gt_anchor):
        values = tf.where(alive, top_iou, _PADDING_IOU)
        best = tf.reduce_max(values, axis=[1, 2], keepdims=True)                  # [B', 1, 1]
        is_best = tf.logical_and(alive, tf.equal(values, best))
        anchor = tf.reduce_min(tf.where(is_best, top_anchor, num_anchors), axis=[1, 2])  # [B']
        is_best = tf.logical_and(is_best, tf.equal(top_anchor, anchor[:, None, None]))
        gt = tf.reduce_min(tf.where(is_best, gt_of, num_gt), axis=[1, 2])          # [B']
        found = tf.reduce_any(alive, axis=[1, 2])                                  # [B']
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


def _shared_images(image_index, best_anchor, overlaps, batch_size, num_anchors):
    """bool [B]: images where two boxes that overlap anything have the same best anchor.

    One sort of the P keys image x A + anchor instead of a [P, P] comparison; boxes that overlap
    nothing get distinct negative keys.
    """
    num_boxes = tf.shape(image_index)[0]
    keys = tf.where(overlaps, tf.cast(image_index, tf.int64) * tf.cast(num_anchors, tf.int64) +
                    tf.cast(best_anchor, tf.int64), -1 - tf.range(num_boxes, dtype=tf.int64))
    keys = tf.sort(keys)
    repeated = tf.equal(keys[1:], keys[:-1])                                      # [P - 1]
    images = tf.cast(tf.boolean_mask(keys[1:], repeated) // tf.cast(num_anchors, tf.int64), tf.int32)
    return tf.scatter_nd(images[:, None], tf.ones_like(images), [batch_size]) > 0


def _bipartite_anchor_per_box(iou, image_index, batch_size):
    """Caffe's greedy bipartite step on flat boxes: int32 [P], each box's anchor, or NO_MATCH.

    In an image where no two boxes that overlap anything share a best anchor, the greedy rounds would
    give every box its best anchor: that is taken directly, and only the other images' boxes (laid out
    padded, [B', G', K]) go through the top-K candidates and the rounds.
    """
    num_anchors = tf.shape(iou)[1]
    best_iou, best_anchor = _first_argmax_rows(iou)                               # [P]
    overlaps = best_iou > _MIN_BIPARTITE_IOU
    direct = tf.where(overlaps, best_anchor, NO_MATCH)                            # [P]

    shared = _shared_images(image_index, best_anchor, overlaps, batch_size, num_anchors)   # [B]
    rows = tf.where(tf.gather(shared, image_index))[:, 0]                         # [P'] boxes to redo
    row_image = tf.gather(image_index, rows)                                      # [P'], ascending
    # Each redone box's place in the padded layout: (which redone image, which box of it).
    new_image = tf.not_equal(row_image, tf.concat([[-1], row_image[:-1]], axis=0))
    slot_image = tf.cumsum(tf.cast(new_image, tf.int32)) - 1                      # [P']
    redone_images = _count(slot_image)
    first_row = tf.math.unsorted_segment_min(tf.range(tf.shape(rows)[0]), slot_image, redone_images)
    slot_box = tf.range(tf.shape(rows)[0]) - tf.gather(first_row, slot_image)     # [P']
    slots = tf.stack([slot_image, slot_box], axis=1)                              # [P', 2]
    boxes_per_image = _count(slot_box)
    # Round r only takes among a box's top-G' anchors (module docstring).
    k = tf.minimum(boxes_per_image, num_anchors)
    top_iou, top_anchor = tf.math.top_k(tf.gather(iou, rows), k=k, sorted=True)   # [P', K]
    padded_shape = tf.stack([redone_images, boxes_per_image, k])
    padded_iou = tf.tensor_scatter_nd_update(tf.fill(padded_shape, _PADDING_IOU), slots, top_iou)
    padded_anchor = tf.scatter_nd(slots, top_anchor, padded_shape)
    rounds = _greedy_rounds(padded_iou, padded_anchor, num_anchors)               # [B', G']
    return tf.tensor_scatter_nd_update(direct, rows[:, None], tf.gather_nd(rounds, slots))


def match_boxes(iou, image_index, batch_size, threshold, rule=CAFFE_BIPARTITE):
    """The matcher on the batch's real boxes, laid out flat: box p of P belongs to image image_index[p].

    The form encode_targets uses: no [B, G, A] of padding rows is ever computed, so the cost follows the
    boxes the batch holds, not the batch's largest count times the batch size.

    Args:
      iou: float [P, A], IoU of box p with anchor a.
      image_index: int32 [P], non-decreasing (each image's boxes together, in their order within it).
      batch_size: int32 scalar B > every image_index.
      threshold, rule: as in `match`.
    Returns:
      int32 [B, A]: the flat box index p matched to each anchor, or NO_MATCH.
    """
    if rule not in RULES:
        raise ValueError(f"unknown matching rule {rule!r}; known: {', '.join(RULES)}")
    iou = tf.convert_to_tensor(iou, tf.float32)
    image_index = tf.convert_to_tensor(image_index, tf.int32)
    num_anchors = tf.shape(iou)[1]

    # Step 2: best box per anchor within its image, kept at or above the threshold.
    matched = _best_box_per_anchor(iou, image_index, batch_size, threshold)       # [B, A]

    # Step 1: each box's own anchor; a claim overrides step 2. Several claims on one anchor (possible
    # under SSD_PYTORCH only): the highest box index wins, as ssd.pytorch's loop overwrites.
    if rule == CAFFE_BIPARTITE:
        box_anchor = _bipartite_anchor_per_box(iou, image_index, batch_size)      # [P]
    else:
        box_anchor = _first_argmax_rows(iou)[1]                                   # [P]
    claims = tf.where(box_anchor != NO_MATCH)[:, 0]                               # [P'']
    claimed = tf.stack([tf.gather(image_index, claims), tf.gather(box_anchor, claims)], axis=1)
    claimer = tf.tensor_scatter_nd_max(tf.fill([batch_size, num_anchors], NO_MATCH), claimed,
                                       tf.cast(claims, tf.int32))                 # [B, A]
    return tf.where(claimer != NO_MATCH, claimer, matched)


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
    iou_gt_by_anchor = tf.convert_to_tensor(iou_gt_by_anchor, tf.float32)
    valid_rows = tf.where(tf.convert_to_tensor(gt_valid, tf.bool))                # [P, 2] (b, g)
    flat = match_boxes(tf.gather_nd(iou_gt_by_anchor, valid_rows), tf.cast(valid_rows[:, 0], tf.int32),
                       tf.shape(iou_gt_by_anchor)[0], threshold, rule)            # [B, A], p
    # Box p is row valid_rows[p, 1] of its image; NO_MATCH maps to the appended NO_MATCH.
    gt_of_box = tf.concat([tf.cast(valid_rows[:, 1], tf.int32), [NO_MATCH]], axis=0)       # [P + 1]
    return tf.gather(gt_of_box, tf.where(flat != NO_MATCH, flat, tf.shape(valid_rows)[0]))
