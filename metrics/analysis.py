"""The model doctor's numbers: where the AP goes, from one evaluation set (metrics/evaluator.EvaluationSet).

Everything is vectorised numpy over the whole set and shares one matching per IoU threshold, TIDE's
(metrics/tide.py: each image's 100 best detections, pycocotools' IoU on COCO pixels, greedy by score,
VOC difficult and COCO crowd boxes as ignore regions), so the numbers here agree with each other:

- precision-recall per class and over all classes pooled (micro), at IoU 0.5 and 0.75, with the
  score threshold of the best F1 (2PR / (P + R)) and TensorBoard's pr_curves counts;
- the confusion matrix at a score and IoU threshold, index 0 being background: row 0 counts
  detections on nothing, column 0 missed objects. Pairs of a detection and a ground truth with IoU
  >= the threshold are taken greedily, same-class pairs first, then by IoU (Ultralytics' ConfusionMatrix
  takes them by IoU alone, so it can pair a detection with a neighbour of another class over its own);
  a detection paired with an ignored box (difficult, crowd) and the ignored boxes are left out;
- the TIDE breakdown (metrics/tide.py);
- AP by object size (COCO's buckets on pixel area: small <= 32^2 < medium <= 96^2 < large) and by
  aspect ratio (height / width: wide < 2/3 <= square <= 3/2 < tall), per class, at IoU 0.5, by TIDE's
  101-point AP and pycocotools' rule for a bucket: ground truths outside it are ignored, so are the
  detections matched to them and the unmatched detections whose own box lies outside it. pycocotools
  matches again for each bucket, preferring boxes inside it; here the one matching is reused, which
  differs only where a detection overlaps boxes of two buckets at IoU >= 0.5;
- per image, at the score threshold: false positives and missed objects, for the worst-images sheet.
"""

import numpy as np

from metrics import tide

PR_IOUS = (0.5, 0.75)
PR_CURVE_THRESHOLDS = 101           # TensorBoard pr_curves bins: score thresholds 0, 0.01, ..., 1
SIZE_BUCKETS = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, np.inf))
ASPECT_BUCKETS = (("wide", 0.0, 2 / 3), ("square", 2 / 3, 3 / 2), ("tall", 3 / 2, np.inf))
SMALL_SIDE_PX = 32                  # "under 32 px": sqrt(area) below COCO's small limit
BACKGROUND = 0


def _undefined_to_none(value):
    return None if value is None or np.isnan(value) else float(value)


def precision_recall(scores, is_tp, num_positives):
    """Cumulative precision and recall over detections sorted by descending score (stable).

    scores [M], is_tp [M] bool (ignored detections already left out). Returns (scores, precision,
    recall, tp) sorted [M]; recall is NaN when num_positives is 0."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    scores, is_tp = np.asarray(scores, np.float64)[order], np.asarray(is_tp, bool)[order]
    tp = np.cumsum(is_tp)
    precision = tp / np.arange(1, tp.size + 1)
    recall = tp / num_positives if num_positives else np.full(tp.size, np.nan)
    return scores, precision, recall, tp


def best_f1(scores, precision, recall):
    """(F1, score threshold, precision, recall) at the detection of best F1; None without one."""
    if scores.size == 0 or np.all(np.isnan(recall)):
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    k = int(np.argmax(f1))
    return float(f1[k]), float(scores[k]), float(precision[k]), float(recall[k])


def pr_curve_counts(scores, tp, num_positives, num_thresholds=PR_CURVE_THRESHOLDS):
    """TensorBoard pr_curves data at score thresholds i / (num_thresholds - 1): detections scoring >= the
    threshold count. Arguments from precision_recall (sorted). Returns a dict of [num_thresholds] arrays
    true_positives, false_positives, true_negatives (0: detection has none), false_negatives,
    precision (1 where nothing is detected, TensorBoard's convention), recall."""
    thresholds = np.arange(num_thresholds) / (num_thresholds - 1)
    count = np.searchsorted(-scores, -thresholds, side="right")    # how many score >= threshold
    tps = np.where(count > 0, tp[np.maximum(count - 1, 0)] if tp.size else 0, 0).astype(np.float64)
    fps = count - tps
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(count > 0, tps / np.maximum(count, 1), 1.0)
        recall = tps / num_positives if num_positives else np.zeros(num_thresholds)
    return {"true_positives": tps, "false_positives": fps.astype(np.float64),
            "true_negatives": np.zeros(num_thresholds), "false_negatives": num_positives - tps,
            "precision": precision, "recall": recall}


def _pr_entry(scores, is_tp, num_positives):
    """(JSON numbers, arrays) of one precision-recall curve."""
    scores, precision, recall, tp = precision_recall(scores, is_tp, num_positives)
    hits = np.diff(np.r_[0, tp]) > 0
    entry = {"num_gt": int(num_positives), "num_detections": int(scores.size),
             "AP": tide.tide_average_precision(hits, num_positives) if num_positives else None,
             "best_f1": None, "best_threshold": None, "precision_at_best": None, "recall_at_best": None}
    best = best_f1(scores, precision, recall)
    if best is not None:
        entry.update(best_f1=best[0], best_threshold=best[1], precision_at_best=best[2],
                     recall_at_best=best[3])
    curve = {"scores": scores, "precision": precision, "recall": recall,
             "counts": pr_curve_counts(scores, tp, num_positives)}
    return entry, curve


def precision_recall_curves(data, matching, class_names):
    """Per class and pooled ("all") precision-recall at one matching. Returns (numbers, curves):
    numbers {"overall": entry, "per_class": {name: entry}} (entry: num_gt, num_detections, AP (TIDE's
    101-point), best_f1, best_threshold, precision_at_best, recall_at_best); curves {name or "all":
    {"scores", "precision", "recall" [M], "counts": pr_curve_counts}}."""
    counted = matching.outcome != tide.IGNORED
    counted &= matching.outcome != tide.DROPPED
    is_tp = matching.outcome == tide.TRUE_POSITIVE
    positives = np.bincount(data.gt_labels[~data.gt_ignored], minlength=len(class_names) + 1)
    numbers, curves = {"per_class": {}}, {}
    for class_id, name in enumerate(class_names, start=1):
        rows = counted & (data.det_classes == class_id)
        numbers["per_class"][name], curves[name] = _pr_entry(data.det_scores[rows], is_tp[rows],
                                                             int(positives[class_id]))
    numbers["overall"], curves["all"] = _pr_entry(data.det_scores[counted], is_tp[counted],
                                                  int(positives[1:].sum()))
    return numbers, curves


def confusion_matrix(data, num_classes, score_threshold, iou_threshold, kept):
    """[C + 1, C + 1] int64: rows the true class, columns the detected class, index 0 background (module
    docstring). `kept` [K] bool: the detections taking part (each image's 100 best)."""
    dets = np.flatnonzero(kept & (data.det_scores >= score_threshold))
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    local_det, gts = tide.image_pairs(data.det_image_index[dets], data.gt_image_index)
    pair_det = dets[local_det]
    iou = tide.coco_paired_iou(data.det_coco_xywh()[pair_det], data.gt_coco_xywh()[gts])
    close = iou >= iou_threshold
    pair_det, gts, iou = pair_det[close], gts[close], iou[close]
    other = data.det_classes[pair_det] != data.gt_labels[gts]
    order = np.lexsort((-iou, other))
    pair_det, gts = pair_det[order], gts[order]
    _, first = np.unique(pair_det, return_index=True)              # each detection's first pair
    first = np.sort(first)
    pair_det, gts = pair_det[first], gts[first]
    _, first = np.unique(gts, return_index=True)                    # then each ground truth's first
    pair_det, gts = pair_det[first], gts[first]
    counted = ~data.gt_ignored[gts]
    np.add.at(matrix, (data.gt_labels[gts[counted]], data.det_classes[pair_det[counted]]), 1)
    det_paired = np.zeros(data.det_scores.size, bool)
    det_paired[pair_det] = True
    gt_paired = np.zeros(data.gt_labels.size, bool)
    gt_paired[gts] = True
    lonely = dets[~det_paired[dets]]
    np.add.at(matrix, (BACKGROUND, data.det_classes[lonely]), 1)
    missed = ~gt_paired & ~data.gt_ignored
    np.add.at(matrix, (data.gt_labels[missed], BACKGROUND), 1)
    return matrix


def _box_sizes(xywh):
    """(area, height / width) of COCO [x, y, w, h] boxes."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return xywh[:, 2] * xywh[:, 3], xywh[:, 3] / xywh[:, 2]


def bucket_average_precisions(data, matching, class_names, buckets, gt_values, det_values):
    """{bucket: {"AP": mean over classes with ground truth in it, "num_gt": n, "per_class": {name: AP}}}
    at `matching`; a box is in a bucket when lo <= value <= hi (pycocotools' areaRng rule)."""
    position = np.empty(matching.outcome.size, np.int64)
    position[matching.order] = np.arange(matching.order.size)
    out = {}
    for name, lo, hi in buckets:
        gt_in = (gt_values >= lo) & (gt_values <= hi)
        det_in = (det_values >= lo) & (det_values <= hi)
        matched = matching.matched_gt
        tp = (matching.outcome == tide.TRUE_POSITIVE) & gt_in[np.maximum(matched, 0)]
        fp = (matching.outcome == tide.FALSE_POSITIVE) & det_in
        counted_gt = gt_in & ~data.gt_ignored
        positives = np.bincount(data.gt_labels[counted_gt], minlength=len(class_names) + 1)
        per_class = {}
        for class_id, class_name in enumerate(class_names, start=1):
            rows = np.flatnonzero((tp | fp) & (data.det_classes == class_id))
            rows = rows[np.lexsort((position[rows], -data.det_scores[rows].astype(np.float64)))]
            per_class[class_name] = (tide.tide_average_precision(tp[rows], int(positives[class_id]))
                                     if positives[class_id] else None)
        defined = [v for v in per_class.values() if v is not None]
        out[name] = {"AP": float(np.mean(defined)) if defined else None, "num_gt": int(positives.sum()),
                     "per_class": per_class}
    return out


def _top(counts, names):
    """(name, count) of the largest count, or (None, 0)."""
    if not len(counts) or counts.max() == 0:
        return None, 0
    k = int(np.argmax(counts))
    return names[k], int(counts[k])


def error_locations(data, breakdown, class_names):
    """Where each TIDE error kind is: {kind: {"count", "top_class", "top_class_count", ...}}; Miss adds
    "small_fraction" (sqrt(area) under 32 px), Cls adds "top_confusion" [detected, true] names."""
    names = ("background",) + tuple(class_names)
    where = {}
    for k, kind in enumerate(tide.ERROR_KINDS[:-1]):
        rows = breakdown["det_error"] == k
        top, n = _top(np.bincount(data.det_classes[rows], minlength=len(names)), names)
        where[kind] = {"count": int(rows.sum()), "top_class": top, "top_class_count": n}
    cls_rows = np.flatnonzero(breakdown["det_error"] == tide.ERROR_KINDS.index(tide.CLS))
    if cls_rows.size:
        pairs = data.det_classes[cls_rows] * len(names) + data.gt_labels[breakdown["det_target"][cls_rows]]
        values, counts = np.unique(pairs, return_counts=True)
        best = values[np.argmax(counts)]
        where[tide.CLS]["top_confusion"] = [names[best // len(names)], names[best % len(names)]]
        where[tide.CLS]["top_confusion_count"] = int(counts.max())
    missed = breakdown["gt_missed"]
    top, n = _top(np.bincount(data.gt_labels[missed], minlength=len(names)), names)
    small = data.gt_area[missed] < SMALL_SIDE_PX ** 2
    where[tide.MISS] = {"count": int(missed.sum()), "top_class": top, "top_class_count": n,
                        "small_fraction": float(small.mean()) if missed.any() else None}
    return where


def per_image_errors(data, matching, score_threshold):
    """(false_positives [N], missed [N]) per image at `score_threshold`: detections scoring at least it
    that are false positives, and counted ground truths no such detection matched."""
    num_images = len(data.image_ids)
    confident = data.det_scores >= score_threshold
    fp = confident & (matching.outcome == tide.FALSE_POSITIVE)
    found = np.zeros(data.gt_labels.size, bool)
    hits = confident & (matching.outcome == tide.TRUE_POSITIVE)
    found[matching.matched_gt[hits]] = True
    missed = ~found & ~data.gt_ignored
    return (np.bincount(data.det_image_index[fp], minlength=num_images),
            np.bincount(data.gt_image_index[missed], minlength=num_images))


def analyze(data, class_names, score_threshold=0.3, confusion_iou=0.5, num_worst=16):
    """Every number of the model doctor for one evaluation set. Returns (numbers, arrays): numbers is
    JSON-ready (module docstring); arrays holds what the plots draw: "pr_curves" {iou: curves of
    precision_recall_curves}, "confusion" [C + 1, C + 1], "det_error" [K], "gt_missed_at_threshold" [G],
    "worst" [n] image indices."""
    det_xywh, gt_xywh = data.det_coco_xywh(), data.gt_coco_xywh()
    args = (data.det_image_index, data.det_classes, data.det_scores, det_xywh, data.gt_image_index,
            data.gt_labels, data.gt_ignored, gt_xywh)
    breakdown = tide.tide_errors(*args)
    numbers = {"tide": {
        "AP50": breakdown["AP"],
        "dAP": {kind: breakdown["main"][kind] for kind in tide.ERROR_KINDS},
        "special_dAP": dict(breakdown["special"]),
        "counts": breakdown["counts"],
        "where": error_locations(data, breakdown, class_names)}}
    numbers["tide"]["largest"] = max(tide.ERROR_KINDS, key=lambda kind: breakdown["main"][kind])
    arrays = {"pr_curves": {}, "det_error": breakdown["det_error"]}
    numbers["pr"] = {}
    for iou in PR_IOUS:
        m = breakdown["matching"] if iou == tide.FOREGROUND_IOU else tide.match(*args, iou_threshold=iou)
        key = "iou%02d" % round(iou * 100)
        numbers["pr"][key], arrays["pr_curves"][key] = precision_recall_curves(data, m, class_names)
    m = breakdown["matching"]
    kept = m.outcome != tide.DROPPED
    matrix = confusion_matrix(data, len(class_names), score_threshold, confusion_iou, kept)
    numbers["confusion"] = {"score_threshold": score_threshold, "iou_threshold": confusion_iou,
                            "labels": ["background", *class_names], "matrix": matrix.tolist()}
    arrays["confusion"] = matrix
    _, gt_aspect = _box_sizes(gt_xywh)
    det_area, det_aspect = _box_sizes(det_xywh)
    gt_area = np.asarray(data.gt_area, np.float64)  # COCO records: the annotation's area
    numbers["ap_by_size"] = bucket_average_precisions(data, m, class_names, SIZE_BUCKETS, gt_area, det_area)
    numbers["ap_by_aspect"] = bucket_average_precisions(data, m, class_names, ASPECT_BUCKETS, gt_aspect,
                                                        det_aspect)
    fps, missed = per_image_errors(data, m, score_threshold)
    worst = np.lexsort((np.arange(fps.size), -(fps + missed)))[:num_worst]
    worst = worst[(fps + missed)[worst] > 0]
    numbers["worst_images"] = [{"image_id": data.image_ids[i], "false_positives": int(fps[i]),
                                "missed": int(missed[i])} for i in worst]
    arrays["worst"] = worst
    found = np.zeros(data.gt_labels.size, bool)
    hits = (data.det_scores >= score_threshold) & (m.outcome == tide.TRUE_POSITIVE)
    found[m.matched_gt[hits]] = True
    arrays["gt_missed_at_threshold"] = ~found & ~data.gt_ignored
    arrays["outcome"] = m.outcome
    return numbers, arrays
