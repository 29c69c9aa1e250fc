"""VOC AP: hand-computed cases for both metrics, the devkit's overlap rules, and a loop reference."""

import numpy as np
import pytest

from metrics import voc

# Three ground truths of class 1 in image 0: A and B count, D is difficult (npos = 2).
GT_A = (1, 1, 10, 10)
GT_B = (21, 21, 30, 30)
GT_D = (41, 41, 50, 50)
FAR_AWAY = (61, 61, 70, 70)


def _evaluate(dets, gts, num_classes=1, **kwargs):
    """dets: (image, class, score, box) tuples; gts: (image, class, difficult, box) tuples."""
    d = list(zip(*dets)) if dets else [(), (), (), ()]
    g = list(zip(*gts)) if gts else [(), (), (), ()]
    return voc.voc_average_precisions(
        num_classes, np.array(d[0], int), np.array(d[1], int), np.array(d[2], float),
        np.array(d[3], float).reshape(-1, 4), np.array(g[0], int), np.array(g[1], int),
        np.array(g[2], bool), np.array(g[3], float).reshape(-1, 4), **kwargs)


def test_hand_case_tp_duplicate_difficult_fp_tp():
    # In score order:            outcome   tp fp  recall precision
    #   0.9 on A                 TP         1  0   0.5    1
    #   0.8 on A again           FP (dup)   1  1   0.5    1/2
    #   0.7 on D (difficult)     ignored    -  -   -      -
    #   0.6 far from all         FP         1  2   0.5    1/3
    #   0.5 on B                 TP         2  2   1.0    1/2
    # VOC07: t = 0..0.5 (6 thresholds) best precision 1; t = 0.6..1.0 (5) best 1/2
    #        -> (6 * 1 + 5 * 0.5) / 11 = 8.5 / 11.
    # All-point: envelope 1 on recall (0, 0.5], 1/2 on (0.5, 1] -> 0.5 * 1 + 0.5 * 0.5 = 0.75.
    gts = [(0, 1, False, GT_A), (0, 1, False, GT_B), (0, 1, True, GT_D)]
    # Given out of score order to exercise the sort.
    dets = [(0, 1, 0.6, FAR_AWAY), (0, 1, 0.9, GT_A), (0, 1, 0.5, GT_B), (0, 1, 0.7, GT_D),
            (0, 1, 0.8, GT_A)]
    aps = _evaluate(dets, gts)
    assert aps["voc07"][0] == pytest.approx(8.5 / 11)
    assert aps["voc12"][0] == pytest.approx(0.75)


def test_hand_case_outcomes_in_score_order():
    dets = np.array([GT_A, GT_A, GT_D, FAR_AWAY, GT_B], float)
    outcomes = voc.match_class_detections(np.zeros(5, int), dets, np.zeros(3, int),
                                          np.array([GT_A, GT_B, GT_D], float),
                                          np.array([False, False, True]))
    assert outcomes.tolist() == [voc.TRUE_POSITIVE, voc.FALSE_POSITIVE, voc.IGNORED,
                                 voc.FALSE_POSITIVE, voc.TRUE_POSITIVE]


def test_ignored_first_detection_gives_no_nan():
    # Ignored, then TP on A: recall 1/2 precision 1, then FP: recall 1/2 precision 1/2.
    # VOC07: thresholds 0..0.5 -> 1, 0.6..1 -> 0: 6/11.  All-point: 0.5 * 1 = 0.5.
    gts = [(0, 1, True, GT_D), (0, 1, False, GT_A), (0, 1, False, GT_B)]
    dets = [(0, 1, 0.9, GT_D), (0, 1, 0.8, GT_A), (0, 1, 0.7, FAR_AWAY)]
    aps = _evaluate(dets, gts)
    assert aps["voc07"][0] == pytest.approx(6 / 11)
    assert aps["voc12"][0] == pytest.approx(0.5)


def test_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    # Class 1: one perfect detection (AP 1). Class 2: only a difficult gt and a detection (NaN).
    # Class 3: a gt and no detection (AP 0). mAP over the defined classes: (1 + 0) / 2.
    gts = [(0, 1, False, GT_A), (0, 2, True, GT_B), (0, 3, False, GT_D)]
    dets = [(0, 1, 0.9, GT_A), (0, 2, 0.9, GT_B)]
    aps = _evaluate(dets, gts, num_classes=3)
    for metric in ("voc07", "voc12"):
        assert aps[metric][0] == 1.0
        assert np.isnan(aps[metric][1])
        assert aps[metric][2] == 0.0
        assert voc.mean_average_precision(aps[metric]) == 0.5
    assert np.isnan(voc.mean_average_precision([np.nan, np.nan]))


def test_no_detections_at_all_gives_zero():
    aps = _evaluate([], [(0, 1, False, GT_A)])
    assert aps["voc07"][0] == 0.0 and aps["voc12"][0] == 0.0


def test_plus_one_pixel_rule_decides_the_match():
    # gt 3x3 pixels (1,1)-(3,3); detection 3 wide, 2 tall (1,1)-(3,2).
    # Devkit (+1): inter 3*2 = 6, union 9 -> 2/3 > 0.5: TP.  Continuous: 2*1 / (2*2) = 0.5: not > 0.5.
    gt, det = np.array([[1, 1, 3, 3]], float), np.array([[1, 1, 3, 2]], float)
    assert voc.paired_overlaps(det, gt)[0] == pytest.approx(2 / 3)
    assert voc.paired_overlaps(det, gt, pixel_plus_one=False)[0] == 0.5
    args = (np.zeros(1, int), det, np.zeros(1, int), gt, np.zeros(1, bool))
    assert voc.match_class_detections(*args).tolist() == [voc.TRUE_POSITIVE]
    assert voc.match_class_detections(*args, pixel_plus_one=False).tolist() == [voc.FALSE_POSITIVE]


def test_overlap_exactly_half_is_not_a_match():
    # gt (1,1)-(10,10) = 100 px; detection (1,1)-(10,5) = 50 px inside it: 50 / 100 = 0.5 exactly.
    outcomes = voc.match_class_detections(np.zeros(1, int), np.array([[1, 1, 10, 5]], float),
                                          np.zeros(1, int), np.array([GT_A], float), np.zeros(1, bool))
    assert outcomes.tolist() == [voc.FALSE_POSITIVE]


def test_disjoint_and_touching_boxes_overlap():
    # Pixel boxes (1..10) and (11..20) share no pixel; (1..10) and (10..19) share one column.
    a = np.array([[1, 1, 10, 10], [1, 1, 10, 10]], float)
    b = np.array([[11, 1, 20, 10], [10, 1, 19, 10]], float)
    assert voc.paired_overlaps(a, b).tolist() == pytest.approx([0.0, 10 / 190])


def test_detection_in_another_image_does_not_match():
    gts = [(0, 1, False, GT_A)]
    dets = [(1, 1, 0.9, GT_A), (0, 1, 0.8, GT_A)]
    # FP then TP: recall 0, 1; precision 0, 1/2. VOC07: 0.5 at every threshold. All-point: 0.5.
    aps = _evaluate(dets, gts)
    assert aps["voc07"][0] == pytest.approx(0.5)
    assert aps["voc12"][0] == pytest.approx(0.5)


def test_voc07_thresholds_are_voc_eval_floats():
    # py-faster-rcnn voc_eval.voc_ap: `for t in np.arange(0., 1.1, 0.1)`, so 3 * 0.1 > 0.3 etc.
    assert voc.VOC07_RECALL_THRESHOLDS.tolist() == [k * 0.1 for k in range(11)]
    assert voc.VOC07_RECALL_THRESHOLDS[3] == 0.30000000000000004 > 0.3
    assert voc.VOC07_RECALL_THRESHOLDS[6] > 0.6 and voc.VOC07_RECALL_THRESHOLDS[7] > 0.7


def test_recall_of_exactly_three_tenths_misses_threshold_point_three():
    # 10 gts, 3 perfect detections: recall 0.1, 0.2, 0.3 at precision 1. 3/10 < 0.30000000000000004,
    # so only the thresholds 0, 0.1, 0.2 are reached: 3/11 (it was 4/11 with thresholds k / 10).
    recall = np.array([1, 2, 3]) / 10
    assert voc.voc07_average_precision(recall, np.ones(3)) == pytest.approx(3 / 11)


def test_voc07_hand_case_3tp_5fp_1tp_of_10():
    # 10 gts; in score order 3 TP, 5 FP, 1 TP. recall 0.1 0.2 0.3 (precision 1), 0.3 x5 (3/4..3/8),
    # 0.4 (4/9). Thresholds 0, 0.1, 0.2 -> 1; "0.3" (0.30000000000000004) and "0.4" -> 4/9; the rest 0.
    # (3 + 2 * 4/9) / 11 = 0.353535...; with thresholds k / 10 it would be (4 + 4/9) / 11 = 0.40404.
    outcomes = [voc.TRUE_POSITIVE] * 3 + [voc.FALSE_POSITIVE] * 5 + [voc.TRUE_POSITIVE]
    recall, precision = voc.precision_recall(outcomes, 10)
    ap = voc.voc07_average_precision(recall, precision)
    assert ap == pytest.approx((3 + 8 / 9) / 11, abs=1e-12)
    assert round(ap, 5) == 0.35354


def _devkit_loop_reference(num_classes, dets, gts):
    """Per-detection loop written after VOCevaldet.m, for the random cross-check."""
    out = {"voc07": [], "voc12": []}
    for c in range(1, num_classes + 1):
        cls_gts = [g for g in gts if g[1] == c]
        npos = sum(1 for g in cls_gts if not g[2])
        matched = [False] * len(cls_gts)
        cls_dets = sorted([d for d in dets if d[1] == c], key=lambda d: -d[2])  # stable
        tp, fp = [], []
        for image, _, _, box in cls_dets:
            best, best_j = -np.inf, -1
            for j, (g_image, _, _, g_box) in enumerate(cls_gts):
                if g_image != image:
                    continue
                iw = min(box[2], g_box[2]) - max(box[0], g_box[0]) + 1
                ih = min(box[3], g_box[3]) - max(box[1], g_box[1]) + 1
                if iw > 0 and ih > 0:
                    union = ((box[2] - box[0] + 1) * (box[3] - box[1] + 1)
                             + (g_box[2] - g_box[0] + 1) * (g_box[3] - g_box[1] + 1) - iw * ih)
                    if iw * ih / union > best:
                        best, best_j = iw * ih / union, j
            if best > 0.5:
                if cls_gts[best_j][2]:
                    continue
                if not matched[best_j]:
                    matched[best_j] = True
                    tp.append(1), fp.append(0)
                else:
                    tp.append(0), fp.append(1)
            else:
                tp.append(0), fp.append(1)
        if npos == 0:
            out["voc07"].append(np.nan), out["voc12"].append(np.nan)
            continue
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        rec, prec = ctp / npos, ctp / np.maximum(ctp + cfp, 1)
        out["voc07"].append(np.mean([max([p for r, p in zip(rec, prec) if r >= t], default=0)
                                     for t in np.arange(0., 1.1, 0.1)]))
        mrec, mpre = [0, *rec, 1], [0, *prec, 0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        out["voc12"].append(sum((mrec[i] - mrec[i - 1]) * mpre[i]
                                for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]))
    return out


def test_agrees_with_devkit_loop_on_random_sets():
    rng = np.random.default_rng(7)
    num_classes, num_images = 3, 30
    gts, dets = [], []
    for image in range(num_images):
        for _ in range(rng.integers(0, 5)):
            x, y = rng.integers(1, 80, size=2)
            box = (x, y, x + rng.integers(5, 30), y + rng.integers(5, 30))
            label = int(rng.integers(1, num_classes + 1))
            gts.append((image, label, bool(rng.random() < 0.2), box))
            for _ in range(rng.integers(0, 4)):  # detections around it, some duplicates
                jitter = rng.integers(-4, 5, size=4)
                det_label = label if rng.random() < 0.8 else int(rng.integers(1, num_classes + 1))
                dets.append((image, det_label,
                             float(np.round(rng.random(), 2)), tuple(np.array(box) + jitter)))
        for _ in range(rng.integers(0, 3)):  # background detections
            x, y = rng.integers(1, 80, size=2)
            dets.append((image, int(rng.integers(1, num_classes + 1)), float(np.round(rng.random(), 2)),
                         (x, y, x + 10, y + 10)))
    expected = _devkit_loop_reference(num_classes, dets, gts)
    got = _evaluate(dets, gts, num_classes=num_classes)
    for metric in ("voc07", "voc12"):
        np.testing.assert_allclose(got[metric], expected[metric], rtol=1e-12)


# --- Through the evaluator: normalized boxes in, devkit pixels inside. ---

def _hand_case_evaluator():
    from dataset.voc_boxes import voc_pixels_to_normalized
    from metrics.evaluator import DetectionEvaluator

    width, height = 100, 80
    evaluator = DetectionEvaluator(["cat", "dog"])

    def norm(*boxes):
        return voc_pixels_to_normalized(np.array(boxes, float), width, height)

    # The hand case above split over two images (B moves to image "b" with its TP detection);
    # "dog" has no ground truth at all.
    evaluator.add("a", height, width, norm(GT_A, GT_D), [1, 1], [False, True],
                  norm(FAR_AWAY, GT_A, GT_D, GT_A), [0.6, 0.9, 0.7, 0.8], [1, 1, 1, 1])
    evaluator.add("b", height, width, norm(GT_B), [1], [False], norm(GT_B, GT_B), [0.5, 0.4], [1, 2])
    return evaluator


def test_evaluator_reproduces_hand_case_and_is_json_clean():
    import json

    evaluator = _hand_case_evaluator()
    results = evaluator.evaluate(metrics=("voc07", "voc12"))
    assert results["voc07"]["AP"]["cat"] == pytest.approx(8.5 / 11)
    assert results["voc12"]["AP"]["cat"] == pytest.approx(0.75)
    assert results["voc12"]["AP"]["dog"] is None  # no ground truth: undefined, not in the mean
    assert results["voc12"]["mAP"] == pytest.approx(0.75)
    assert results["num_positives"] == {"cat": 2, "dog": 0}
    assert (results["num_images"], results["num_detections"]) == (2, 6)
    assert "coco" not in results
    json.dumps(results, allow_nan=False)
    table = evaluator.format_table(results).splitlines()
    assert table[1].split() == ["cat", "2", "0.7727", "0.7500"]
    assert table[2].split() == ["dog", "0", "n/a", "n/a"]
    assert table[3].split() == ["mAP", "2", "0.7727", "0.7500"]


def test_evaluator_rejects_bad_input():
    from metrics.evaluator import DetectionEvaluator

    evaluator = DetectionEvaluator(["cat"])
    box = np.array([[0.1, 0.1, 0.5, 0.5]])
    evaluator.add("x", 10, 10, box, [1], [False], box, [0.9], [1])
    with pytest.raises(ValueError, match="added twice"):
        evaluator.add("x", 10, 10, box, [1], [False], box, [0.9], [1])
    with pytest.raises(ValueError, match=r"det_classes \[2\] outside 1..1"):
        evaluator.add("y", 10, 10, box, [1], [False], box, [0.9], [2])
    with pytest.raises(ValueError, match="gt_labels has 2 rows, expected 1"):
        evaluator.add("y", 10, 10, box, [1, 1], [False], box, [0.9], [1])
    with pytest.raises(ValueError, match="non-finite"):
        evaluator.add("y", 10, 10, box, [1], [False], box, [np.nan], [1])
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluator.evaluate(metrics=("voc2099",))
    assert evaluator.num_images == 1
    with pytest.raises(ValueError, match="no images"):
        DetectionEvaluator(["cat"]).evaluate()


def test_evaluator_accepts_images_without_boxes():
    from metrics.evaluator import DetectionEvaluator

    evaluator = DetectionEvaluator(["cat"])
    evaluator.add("empty", 10, 10, np.zeros((0, 4)), [], [], np.zeros((0, 4)), [], [])
    results = evaluator.evaluate(metrics=("voc07",))
    assert results["voc07"] == {"mAP": None, "AP": {"cat": None}}
