"""TIDE: where the AP goes (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection
Errors", ECCV 2020), vectorised with numpy and equal to the `tidecv` package (dbolya/tide,
tidecv/quantify.py, errors/main_errors.py, errors/error.py, ap.py) on the same detections.

What tidecv does, in the order its code applies it (TIDERun._eval_image, TIDEExample._run):

- Per image, detections sorted by descending score (ties keep their given order) and cut to the
  `max_dets` best (100). Overlaps are pycocotools' box IoU on COCO [x, y, w, h] pixels (no +1).
- Matching: each detection in turn takes the unused ground truth of its own class with the highest IoU
  (the first on a tie) when that IoU is >= the foreground threshold (0.5), which uses it up.
- Ignore regions (VOC difficult, COCO crowd boxes): an unmatched detection whose intersection over its
  own area with a region of its class is > 0.5 is ignored (it leaves the AP, but still gets an error).
- Every unmatched or ignored detection gets one error, the first test that holds: no ground truth in
  the image -> background; best same-class IoU in [0.1, 0.5] -> localization (Loc); IoU >= 0.5 with a
  ground truth of another class -> classification (Cls); IoU >= 0.5 with a used same-class ground
  truth -> duplicate (Dupe); best IoU of any class <= 0.1 -> background (Bkg); else both (Both: wrong
  class and poorly placed, what remains).
- A ground truth neither matched nor the target of a Loc or Cls error whose target was still unused
  is missed (Miss).
- AP: COCO-style 101-point interpolation per class (tidecv's ap.py), the mean over the classes that
  have ground truth or detections (a class with detections and no ground truth counts 0).
- dAP of a kind: the mAP with only that kind fixed, minus the mAP (clipped at 0). Fixing Loc or Cls
  turns the highest-scored error aimed at an unused ground truth into a true positive (Cls moves it
  to the ground truth's class) and drops the others; fixing Dupe, Bkg or Both drops those detections;
  fixing Miss removes those ground truths from the count. FalsePos: every true positive scored 1 and
  every false positive 0; FalseNeg: every unmatched ground truth removed (neither clipped).
- Score ties in the AP: tidecv's stable sort keeps its data points' insertion order, image order in
  the plain run but the errors before the true positives in a fixed run; both orders are kept here,
  so the numbers are equal even with tied scores.

Units: APs and dAPs are fractions (0-1), where tidecv prints percentage points (x 100).
tests/test_tide.py compares every number with tidecv's on a stored fixture.

Inputs are flat arrays, as metrics/evaluator.EvaluationSet holds them (image index per box).
"""

import dataclasses

import numpy as np

FOREGROUND_IOU = 0.5   # tidecv TIDE(pos_threshold=0.5)
BACKGROUND_IOU = 0.1   # tidecv TIDE(background_threshold=0.1)
MAX_DETECTIONS = 100   # tidecv Data(max_dets=100), COCO's maxDets
RECALL_POINTS = np.arange(101) / 100  # COCO's 101 recall points, as tidecv's x / 100

# Error kinds, in tidecv's order (TIDE._error_types), with its short names.
CLS, LOC, BOTH, DUPE, BKG, MISS = "Cls", "Loc", "Both", "Dupe", "Bkg", "Miss"
ERROR_KINDS = (CLS, LOC, BOTH, DUPE, BKG, MISS)
SPECIAL_KINDS = ("FalsePos", "FalseNeg")
# Per detection: which error it is (index into ERROR_KINDS); NO_ERROR for true positives and the
# detections past max_dets.
NO_ERROR = -1
# Per detection outcome of the matching (metrics/voc.py's names and values).
FALSE_POSITIVE, TRUE_POSITIVE, IGNORED = 0, 1, 2
DROPPED = 3  # past the image's max_dets best: in no AP and no error


def coco_paired_iou(det_xywh, gt_xywh, crowd=False):
    """pycocotools' box IoU (maskApi.c bbIou) of row i of det_xywh [P, 4] with row i of gt_xywh [P, 4],
    COCO [x, y, w, h] pixels; `crowd`: intersection over the detection's area. Returns [P] float64."""
    d = np.asarray(det_xywh, np.float64).reshape(-1, 4)
    g = np.asarray(gt_xywh, np.float64).reshape(-1, 4)
    w = np.minimum(d[:, 0] + d[:, 2], g[:, 0] + g[:, 2]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 1] + d[:, 3], g[:, 1] + g[:, 3]) - np.maximum(d[:, 1], g[:, 1])
    inter = w * h
    union = d[:, 2] * d[:, 3] if crowd else d[:, 2] * d[:, 3] + g[:, 2] * g[:, 3] - inter
    overlap = (w > 0) & (h > 0) & (union > 0)
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlap)


def image_pairs(det_image, gt_image):
    """Every (detection, ground truth) pair of one image, grouped by detection in detection order and,
    within a detection, in ground-truth order. Returns pair_det [P], pair_gt [P] (indices)."""
    num_images = int(max(det_image.max(initial=-1), gt_image.max(initial=-1))) + 1
    gt_order = np.argsort(gt_image, kind="stable")
    gt_count = np.bincount(gt_image, minlength=num_images)
    gt_start = np.cumsum(gt_count) - gt_count
    per_det = gt_count[det_image]                                   # [K]
    pair_det = np.repeat(np.arange(det_image.size), per_det)        # [P]
    rank = np.arange(pair_det.size) - np.repeat(np.cumsum(per_det) - per_det, per_det)
    pair_gt = gt_order[gt_start[det_image][pair_det] + rank]        # [P]
    return pair_det, pair_gt


def _segment_max(values, pair_det, num_dets):
    """Per detection: the largest of its pairs' values (0 without pairs) and the first pair reaching it
    (index into the pairs; -1 without pairs). Pairs are grouped by detection."""
    best = np.zeros(num_dets)
    first = np.full(num_dets, -1)
    if pair_det.size == 0:
        return best, first
    starts = np.flatnonzero(np.r_[True, pair_det[1:] != pair_det[:-1]])
    dets = pair_det[starts]
    best[dets] = np.maximum.reduceat(values, starts)
    at_best = values == best[pair_det]
    first[dets] = np.minimum.reduceat(np.where(at_best, np.arange(values.size), values.size), starts)
    return best, first


@dataclasses.dataclass(frozen=True)
class Matching:
    """One matching of detections to ground truth at one IoU threshold.

    order [K'] indices of the kept detections (each image's max_dets best) in tidecv's order: image
    order, then descending score; rank [K] the position of each detection in its image's sorted list;
    outcome [K] TRUE_POSITIVE / FALSE_POSITIVE / IGNORED / DROPPED; matched_gt [K] (-1 if none);
    gt_used [G] bool (ignored ground truths never are). Pairs (det, counted gt of its image) with
    their IoU and same-class flag, grouped by detection in `order`.
    """
    order: np.ndarray
    rank: np.ndarray
    outcome: np.ndarray
    matched_gt: np.ndarray
    gt_used: np.ndarray
    pair_det: np.ndarray
    pair_gt: np.ndarray
    pair_iou: np.ndarray
    pair_same: np.ndarray


def match(det_image, det_classes, det_scores, det_xywh, gt_image, gt_classes, gt_ignored, gt_xywh,
          iou_threshold=FOREGROUND_IOU, max_dets=MAX_DETECTIONS):
    """tidecv's matching (TIDEExample._run) of every image at once; see Matching.

    Args: det_image [K] int, det_classes [K] int, det_scores [K], det_xywh [K, 4] COCO pixels;
      gt_image [G] int, gt_classes [G] int, gt_ignored [G] bool (ignore regions), gt_xywh [G, 4].
    """
    det_image = np.asarray(det_image, np.int64).reshape(-1)
    det_classes = np.asarray(det_classes, np.int64).reshape(-1)
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    det_xywh = np.asarray(det_xywh, np.float64).reshape(-1, 4)
    gt_image = np.asarray(gt_image, np.int64).reshape(-1)
    gt_classes = np.asarray(gt_classes, np.int64).reshape(-1)
    gt_ignored = np.asarray(gt_ignored, bool).reshape(-1)
    gt_xywh = np.asarray(gt_xywh, np.float64).reshape(-1, 4)
    num_dets = det_scores.size

    # Per image by descending score, ties in the given order; rank = place in the image's list.
    by_image = np.lexsort((np.arange(num_dets), -det_scores, det_image))
    image_sorted = det_image[by_image]
    first_of_image = np.searchsorted(image_sorted, image_sorted, side="left")
    rank = np.empty(num_dets, np.int64)
    rank[by_image] = np.arange(num_dets) - first_of_image
    order = by_image[rank[by_image] < max_dets]                      # [K'] the kept detections
    outcome = np.full(num_dets, DROPPED, np.int64)
    outcome[order] = FALSE_POSITIVE
    matched_gt = np.full(num_dets, -1, np.int64)
    gt_used = np.zeros(gt_classes.size, bool)

    counted = np.flatnonzero(~gt_ignored)
    local_det, local_gt = image_pairs(det_image[order], gt_image[counted])
    pair_det, pair_gt = order[local_det], counted[local_gt]
    pair_iou = coco_paired_iou(det_xywh[pair_det], gt_xywh[pair_gt])
    pair_same = det_classes[pair_det] == gt_classes[pair_gt]

    # Greedy in each image's score order: all images' r-th detections at once (they never share a gt).
    pair_rank = rank[pair_det]
    by_rank = np.argsort(pair_rank, kind="stable")                 # still grouped by det, gts in order
    bounds = np.searchsorted(pair_rank[by_rank], np.arange(max_dets + 1))
    cls_iou = np.where(pair_same, pair_iou, 0.0)
    for r in range(max_dets):
        block = by_rank[bounds[r]:bounds[r + 1]]
        if block.size == 0:
            continue
        dets, gts = pair_det[block], pair_gt[block]
        values = np.where(gt_used[gts], 0.0, cls_iou[block])
        ids = np.unique(dets)
        best, first = _segment_max(values, np.searchsorted(ids, dets), ids.size)
        hit = best >= iou_threshold
        winners = first[hit]
        matched_gt[dets[winners]] = gts[winners]
        gt_used[gts[winners]] = True
        outcome[dets[winners]] = TRUE_POSITIVE

    # Ignore regions: same class, intersection over the detection's area > the threshold.
    unmatched = order[outcome[order] == FALSE_POSITIVE]
    regions = np.flatnonzero(gt_ignored)
    if unmatched.size and regions.size:
        local_det, local_gt = image_pairs(det_image[unmatched], gt_image[regions])
        dets, gts = unmatched[local_det], regions[local_gt]
        inside = coco_paired_iou(det_xywh[dets], gt_xywh[gts], crowd=True) > iou_threshold
        inside &= det_classes[dets] == gt_classes[gts]
        outcome[dets[inside]] = IGNORED
    return Matching(order, rank, outcome, matched_gt, gt_used, pair_det, pair_gt, pair_iou, pair_same)


def classify_errors(m, gt_ignored, foreground=FOREGROUND_IOU, background=BACKGROUND_IOU):
    """tidecv's error tests (TIDERun._eval_image) for every unmatched or ignored kept detection of the
    Matching `m`; gt_ignored [G] bool.

    Returns (det_error [K] index into ERROR_KINDS or NO_ERROR, det_target [K] the ground truth a Loc
    or Cls error aims at (-1 otherwise), gt_missed [G] bool)."""
    num_dets = m.outcome.size
    det_error = np.full(num_dets, NO_ERROR, np.int64)
    det_target = np.full(num_dets, -1, np.int64)
    # Pairs in `order`'s detection grouping, as positions 0..K'-1 for the segment reductions.
    position = np.full(num_dets, -1, np.int64)
    position[m.order] = np.arange(m.order.size)
    seg = position[m.pair_det]
    kept = m.order.size
    same, iou = m.pair_same, m.pair_iou
    cls_best, cls_first = _segment_max(np.where(same, iou, 0.0), seg, kept)
    other_best, other_first = _segment_max(np.where(same, 0.0, iou), seg, kept)
    dupe_best, _ = _segment_max(np.where(same & m.gt_used[m.pair_gt], iou, 0.0), seg, kept)
    any_best, _ = _segment_max(iou, seg, kept)
    has_gt = np.bincount(seg, minlength=kept) > 0

    kinds = np.full(kept, ERROR_KINDS.index(BOTH), np.int64)   # what remains
    target = np.full(kept, -1, np.int64)
    # Later tests first, so the first test that holds writes last.
    kinds[any_best <= background] = ERROR_KINDS.index(BKG)
    kinds[dupe_best >= foreground] = ERROR_KINDS.index(DUPE)
    is_cls = other_best >= foreground
    kinds[is_cls] = ERROR_KINDS.index(CLS)
    target[is_cls] = m.pair_gt[other_first[is_cls]]
    is_loc = (background <= cls_best) & (cls_best <= foreground)
    kinds[is_loc] = ERROR_KINDS.index(LOC)
    target[is_loc] = m.pair_gt[cls_first[is_loc]]
    kinds[~has_gt] = ERROR_KINDS.index(BKG)
    target[~has_gt] = -1

    wrong = m.outcome[m.order] != TRUE_POSITIVE
    det_error[m.order[wrong]] = kinds[wrong]
    det_target[m.order[wrong]] = target[wrong]
    # A Loc or Cls error aimed at an unused ground truth makes it "usable": not missed.
    aims = det_target[det_target >= 0]
    usable = np.zeros(gt_ignored.size, bool)
    usable[aims[~m.gt_used[aims]]] = True
    gt_missed = ~gt_ignored & ~m.gt_used & ~usable
    return det_error, det_target, gt_missed


def tide_average_precision(tp_sorted, num_positives):
    """tidecv's AP (ap.py APDataObject.get_ap), as a fraction: data points already in score order
    (tp_sorted [M] bool), 101-point interpolation of the right-to-left maximum precision."""
    if num_positives <= 0:
        return 0.0
    tp_sorted = np.asarray(tp_sorted, bool)
    if tp_sorted.size == 0:
        return 0.0
    tp = np.cumsum(tp_sorted)
    precision = np.maximum.accumulate((tp / np.arange(1, tp.size + 1))[::-1])[::-1]
    recall = tp / num_positives
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    y = np.where(index < tp.size, precision[np.minimum(index, tp.size - 1)], 0.0)
    return float(np.cumsum(y)[-1] / y.size)   # sequential, as tidecv's sum()


def mean_ap(point_class, point_score, point_tp, point_order, positives, classes):
    """tidecv's mAP (ClassedAPDataObject.get_mAP) over `classes` (the ids it knows), skipping the
    empty ones (no data points and no positives). Data points sort by descending score, ties by
    `point_order`. `positives` {class id: count}. Returns (mAP, {class id: AP})."""
    sort = np.lexsort((point_order, -np.asarray(point_score, np.float64), point_class))
    cls_sorted, tp_sorted = np.asarray(point_class)[sort], np.asarray(point_tp, bool)[sort]
    bounds = np.searchsorted(cls_sorted, np.asarray(classes), side="left")
    ends = np.searchsorted(cls_sorted, np.asarray(classes), side="right")
    aps = {}
    for c, start, end in zip(classes, bounds, ends):
        if end == start and positives.get(c, 0) == 0:
            continue
        aps[c] = tide_average_precision(tp_sorted[start:end], positives.get(c, 0))
    # tidecv divides by zero when no class is left (e.g. every miss fixed and no detection): 0 here.
    return (sum(aps.values()) / len(aps) if aps else 0.0), aps


def tide_errors(det_image, det_classes, det_scores, det_xywh, gt_image, gt_classes, gt_ignored,
                gt_xywh, foreground=FOREGROUND_IOU, background=BACKGROUND_IOU, max_dets=MAX_DETECTIONS):
    """The TIDE breakdown (module docstring), arguments as `match`.

    Returns {"AP": mAP at `foreground`, "AP_per_class": {class id: AP},
             "main": {kind: dAP} for ERROR_KINDS, "special": {"FalsePos": dAP, "FalseNeg": dAP},
             "counts": {kind: errors}, and the per-box arrays "det_error" [K], "det_target" [K],
             "gt_missed" [G], "outcome" [K]}.
    """
    det_classes = np.asarray(det_classes, np.int64).reshape(-1)
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    gt_classes = np.asarray(gt_classes, np.int64).reshape(-1)
    gt_ignored = np.asarray(gt_ignored, bool).reshape(-1)
    m = match(det_image, det_classes, det_scores, det_xywh, gt_image, gt_classes, gt_ignored, gt_xywh,
              foreground, max_dets)
    det_error, det_target, gt_missed = classify_errors(m, gt_ignored, foreground, background)
    counted_gt = gt_classes[~gt_ignored]
    positives = dict(zip(*np.unique(counted_gt, return_counts=True)))
    positives = {int(c): int(n) for c, n in positives.items()}
    in_ap = m.order[(m.outcome[m.order] == TRUE_POSITIVE) | (m.outcome[m.order] == FALSE_POSITIVE)]
    classes = sorted(set(positives) | set(det_classes[in_ap].tolist()))
    position = np.empty(det_scores.size, np.int64)
    position[m.order] = np.arange(m.order.size)
    is_tp = m.outcome == TRUE_POSITIVE
    base_ap, base_per_class = mean_ap(det_classes[in_ap], det_scores[in_ap], is_tp[in_ap],
                                      position[in_ap], positives, classes)

    # A fixed run: the errors' data points (in error order) before the true positives.
    errors = m.order[det_error[m.order] != NO_ERROR]
    tps = m.order[is_tp[m.order]]
    # The highest-scored (first) Loc / Cls error aimed at each unused ground truth.
    aimed = errors[(det_target[errors] >= 0)]
    aimed = aimed[~m.gt_used[det_target[aimed]]]
    _, first = np.unique(det_target[aimed], return_index=True)
    fixable = np.zeros(det_scores.size, bool)
    fixable[aimed[first]] = True

    def fixed_map(kind=None, score_transform=False, positives_fixed=None):
        fixed = det_error[errors] == (ERROR_KINDS.index(kind) if kind in ERROR_KINDS else -2)
        counted = m.outcome[errors] == FALSE_POSITIVE
        if kind in (LOC, CLS):
            turned = fixed & fixable[errors]
        else:
            turned = np.zeros(errors.size, bool)
        keep = (~fixed & counted) | turned
        err = errors[keep]
        err_class = det_classes[err].copy()
        if kind == CLS:
            moved = turned[keep]
            err_class[moved] = gt_classes[det_target[err[moved]]]
        point_class = np.concatenate([err_class, det_classes[tps]])
        point_tp = np.concatenate([turned[keep], np.ones(tps.size, bool)])
        point_score = np.concatenate([det_scores[err], det_scores[tps]])
        if score_transform:
            point_score = point_tp.astype(np.float64)
        point_order = np.concatenate([np.arange(err.size), err.size + np.arange(tps.size)])
        return mean_ap(point_class, point_score, point_tp, point_order, positives_fixed or positives,
                       classes)[0]

    main = {}
    for kind in ERROR_KINDS:
        if kind == MISS:
            missed = dict(zip(*np.unique(gt_classes[gt_missed], return_counts=True)))
            value = fixed_map(positives_fixed={c: n - int(missed.get(c, 0)) for c, n in positives.items()})
        else:
            value = fixed_map(kind)
        main[kind] = max(value - base_ap, 0.0)
    unmatched = gt_classes[~gt_ignored & ~m.gt_used]
    not_found = dict(zip(*np.unique(unmatched, return_counts=True)))
    special = {"FalsePos": fixed_map(score_transform=True) - base_ap,
               "FalseNeg": fixed_map(positives_fixed={c: n - int(not_found.get(c, 0))
                                                      for c, n in positives.items()}) - base_ap}
    counts = {kind: int(np.count_nonzero(det_error == k)) for k, kind in enumerate(ERROR_KINDS)}
    counts[MISS] = int(np.count_nonzero(gt_missed))
    return {"AP": base_ap, "AP_per_class": base_per_class, "main": main, "special": special,
            "counts": counts, "det_error": det_error, "det_target": det_target, "gt_missed": gt_missed,
            "outcome": m.outcome, "matching": m}
