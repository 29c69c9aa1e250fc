"""PASCAL VOC average precision: the VOC2007 11-point metric and the VOC2010+ all-point metric.

Facts follow the VOC devkit's VOCevaldet.m (the code here is our own, vectorised with numpy):

- Boxes are devkit pixel boxes (xmin, ymin, xmax, ymax), 1-based and inclusive, so a box is
  xmax - xmin + 1 pixels wide; overlap is intersection over union of those pixel counts
  (`pixel_plus_one=False` drops the +1 for continuous boxes, used to compare with COCO).
- Detections of one class are taken in descending score over all images. Each one looks only at its
  best-overlap ground truth of that class in its own image (first one on a tie of overlaps, as
  MATLAB's `max`). If that overlap is strictly greater than 0.5 (`ovmax > minoverlap`): a difficult
  ground truth makes the detection ignored (neither true nor false positive); an unmatched one makes
  it a true positive and marks the ground truth matched; an already matched one makes it a false
  positive (the devkit does not fall back to the second-best ground truth). Otherwise it is a false
  positive.
- Ties in score keep the order the detections were given in (a stable sort, as MATLAB's `sort`;
  the evaluator gives them in image order, then in the image's detection order). voc_eval.py's
  default quicksort may order ties differently, which can change AP only when tied detections differ
  in outcome.
- npos counts the non-difficult ground truths; recall = tp / npos, precision = tp / (tp + fp).
  Ignored detections are dropped before the cumulative sums: in the devkit they repeat the previous
  (recall, precision) point (or give 0/0 before the first counted detection), which changes neither
  metric.

Greedy matching in global score order decomposes per image: a detection's outcome depends only on
the higher-scored detections of the same image and class. So all detections of a class are matched
at once: each is paired with every ground truth of its image, the best ground truth is a segment
arg-max over those pairs, and the true positive for a ground truth is the first detection (in score
order) that claims it.

Undefined AP: a class without non-difficult ground truth has no recall, so its AP is NaN, and the
mean AP (`mean_average_precision`) is taken over the classes whose AP is defined. A class with
ground truth but no detections has AP 0.
"""

import numpy as np

# The devkit's VOCopts.minoverlap; a match needs an overlap strictly above it.
VOC_IOU_THRESHOLD = 0.5
# VOC2007 11-point metric: the recall thresholds of py-faster-rcnn's voc_eval.py (`voc_ap`,
# use_07_metric), the protocol behind ssd.pytorch's 77.43 and most published Python numbers. They are
# np.arange(0., 1.1, 0.1), i.e. k * 0.1 in floating point, so elements 3, 6 and 7 are
# 0.30000000000000004, 0.6000000000000001 and 0.7000000000000001: a recall of exactly 3/10 does NOT
# reach the threshold "0.3". Keep these exact floats (not k / 10): AP is compared with voc_eval to 1e-6.
VOC07_RECALL_THRESHOLDS = np.arange(0., 1.1, 0.1)

# Outcome of one detection (named instead of magic numbers).
FALSE_POSITIVE = 0
TRUE_POSITIVE = 1
IGNORED = 2


def paired_overlaps(boxes_a, boxes_b, pixel_plus_one=True):
    """Intersection over union of row i of `boxes_a` with row i of `boxes_b`.

    Args:
      boxes_a, boxes_b: [P, 4] (xmin, ymin, xmax, ymax); devkit pixel boxes when `pixel_plus_one`.
      pixel_plus_one: count inclusive pixels (width = xmax - xmin + 1), as the devkit does.
    Returns:
      [P] float64 overlaps; 0 where the boxes do not intersect.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    one = 1.0 if pixel_plus_one else 0.0
    inter_w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + one
    inter_h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + one
    intersection = np.maximum(inter_w, 0.0) * np.maximum(inter_h, 0.0)
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    union = area_a + area_b - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        overlaps = np.where(union > 0.0, intersection / union, 0.0)
    return overlaps


def match_class_detections(det_image_index, det_boxes, gt_image_index, gt_boxes, gt_difficult,
                           iou_threshold=VOC_IOU_THRESHOLD, pixel_plus_one=True):
    """Outcome of every detection of one class, given in descending score order.

    Args:
      det_image_index: [K] int, image of each detection; detections sorted by descending score.
      det_boxes: [K, 4] pixel (xmin, ymin, xmax, ymax).
      gt_image_index: [G] int, image of each ground truth of this class.
      gt_boxes: [G, 4] pixel (xmin, ymin, xmax, ymax).
      gt_difficult: [G] bool.
    Returns:
      [K] int8 outcomes: TRUE_POSITIVE, FALSE_POSITIVE or IGNORED, in the input order.
    """
    det_image_index = np.asarray(det_image_index, dtype=np.int64).reshape(-1)
    gt_image_index = np.asarray(gt_image_index, dtype=np.int64).reshape(-1)
    num_dets = det_image_index.size
    outcomes = np.full(num_dets, FALSE_POSITIVE, dtype=np.int8)
    if num_dets == 0 or gt_image_index.size == 0:
        return outcomes
    # Ground truths grouped by image: those of image i are gt_sorted[gt_start[i]:gt_start[i] + n].
    gt_order = np.argsort(gt_image_index, kind="stable")
    gt_boxes_sorted = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)[gt_order]
    gt_difficult_sorted = np.asarray(gt_difficult, dtype=bool).reshape(-1)[gt_order]
    num_images = int(max(det_image_index.max(), gt_image_index.max())) + 1
    gt_count = np.bincount(gt_image_index, minlength=num_images)
    gt_start = np.cumsum(gt_count) - gt_count

    # One pair per (detection, ground truth of the same image), grouped by detection.
    pairs_per_det = gt_count[det_image_index]  # [K]
    pair_det = np.repeat(np.arange(num_dets), pairs_per_det)  # [P]
    if pair_det.size == 0:
        return outcomes
    segment_start = np.cumsum(pairs_per_det) - pairs_per_det  # [K]
    pair_rank = np.arange(pair_det.size) - segment_start[pair_det]  # [P] rank of the gt in its image
    pair_gt = gt_start[det_image_index][pair_det] + pair_rank  # [P] index into the sorted gts
    overlaps = paired_overlaps(np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)[pair_det],
                               gt_boxes_sorted[pair_gt], pixel_plus_one)

    has_gt = pairs_per_det > 0
    starts = segment_start[has_gt]  # segments of detections with gts tile the pairs exactly
    best_overlap = np.full(num_dets, -np.inf)
    best_overlap[has_gt] = np.maximum.reduceat(overlaps, starts)
    # First ground truth reaching the best overlap (MATLAB's max returns the first index).
    rank_if_best = np.where(overlaps == best_overlap[pair_det], pair_rank, np.iinfo(np.int64).max)
    best_rank = np.zeros(num_dets, dtype=np.int64)
    best_rank[has_gt] = np.minimum.reduceat(rank_if_best, starts)
    best_gt = gt_start[det_image_index] + best_rank  # [K]; meaningful only where has_gt

    hit = best_overlap > iou_threshold
    hit_difficult = hit & gt_difficult_sorted[np.where(has_gt, best_gt, 0)]
    outcomes[hit_difficult] = IGNORED
    claims = np.flatnonzero(hit & ~hit_difficult)
    # np.unique's return_index gives the first claim (highest score) on each ground truth.
    _, first_claim = np.unique(best_gt[claims], return_index=True)
    outcomes[claims[first_claim]] = TRUE_POSITIVE
    return outcomes


def precision_recall(outcomes, num_positives):
    """Cumulative recall and precision [M] over the non-ignored outcomes [K] (score order).

    num_positives must be > 0 (the number of non-difficult ground truths).
    """
    outcomes = np.asarray(outcomes)
    counted = outcomes[outcomes != IGNORED]
    tp = np.cumsum(counted == TRUE_POSITIVE, dtype=np.float64)
    fp = np.cumsum(counted == FALSE_POSITIVE, dtype=np.float64)
    return tp / float(num_positives), tp / (tp + fp)


def voc07_average_precision(recall, precision):
    """VOC2007 11-point AP: mean over t in VOC07_RECALL_THRESHOLDS of the best precision at recall >= t (0 if none)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    reached = recall[None, :] >= VOC07_RECALL_THRESHOLDS[:, None]  # [11, M]
    best = np.where(reached, precision[None, :], 0.0).max(axis=1, initial=0.0)
    return float(best.mean())


def all_point_average_precision(recall, precision):
    """VOC2010+ AP: area under the monotone (right-to-left running maximum) precision envelope."""
    mrec = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1  # points where recall moves
    return float(np.sum((mrec[change] - mrec[change - 1]) * envelope[change]))


def voc_average_precisions(num_classes, det_image_index, det_classes, det_scores, det_boxes,
                           gt_image_index, gt_classes, gt_difficult, gt_boxes,
                           iou_threshold=VOC_IOU_THRESHOLD, pixel_plus_one=True):
    """Per-class AP under both VOC metrics for a whole evaluation set.

    Args:
      num_classes: C; class ids are 1..C.
      det_image_index [K] int, det_classes [K] int, det_scores [K] float, det_boxes [K, 4] pixel
        (xmin, ymin, xmax, ymax): every detection, in a fixed order that breaks score ties.
      gt_image_index [G] int, gt_classes [G] int, gt_difficult [G] bool, gt_boxes [G, 4] pixel.
    Returns:
      {"voc07": [C] float64, "voc12": [C] float64}: index c holds class c + 1; NaN for a class
      without non-difficult ground truth.
    """
    det_classes = np.asarray(det_classes).reshape(-1)
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    det_image_index = np.asarray(det_image_index).reshape(-1)
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    gt_classes = np.asarray(gt_classes).reshape(-1)
    gt_difficult = np.asarray(gt_difficult, dtype=bool).reshape(-1)
    gt_image_index = np.asarray(gt_image_index).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    aps = {"voc07": np.full(num_classes, np.nan), "voc12": np.full(num_classes, np.nan)}
    for class_id in range(1, num_classes + 1):
        is_gt = gt_classes == class_id
        num_positives = int(np.count_nonzero(is_gt & ~gt_difficult))
        if num_positives == 0:
            continue
        dets = np.flatnonzero(det_classes == class_id)
        dets = dets[np.argsort(-det_scores[dets], kind="stable")]
        outcomes = match_class_detections(det_image_index[dets], det_boxes[dets],
                                          gt_image_index[is_gt], gt_boxes[is_gt],
                                          gt_difficult[is_gt], iou_threshold, pixel_plus_one)
        recall, precision = precision_recall(outcomes, num_positives)
        aps["voc07"][class_id - 1] = voc07_average_precision(recall, precision)
        aps["voc12"][class_id - 1] = all_point_average_precision(recall, precision)
    return aps


def mean_average_precision(per_class_ap):
    """Mean of the defined (non-NaN) per-class APs [C]; NaN when none is defined."""
    aps = np.asarray(per_class_ap, dtype=np.float64)
    defined = aps[~np.isnan(aps)]
    return float(defined.mean()) if defined.size else float("nan")
