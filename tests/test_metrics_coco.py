"""COCO metrics wrapper: known-answer cases, difficult boxes, empty detections, and VOC agreement."""

import math

import numpy as np
import pytest

from metrics import coco, voc

CLASS_NAMES = ("cat", "dog", "bus")
# One 640x480 image with one object of each size range (COCO: small < 32^2 <= medium < 96^2 <= large).
SMALL, MEDIUM, LARGE = [10, 10, 20, 20], [100, 100, 50, 50], [300, 200, 200, 200]


def _gt(boxes, labels, difficult=None, sizes=((480, 640),)):
    n = len(boxes)
    heights, widths = zip(*sizes)
    return coco.build_ground_truth(CLASS_NAMES, heights, widths, np.zeros(n, int), np.array(labels),
                                   np.zeros(n, bool) if difficult is None else np.array(difficult),
                                   np.array(boxes, float).reshape(-1, 4))


def _metrics(gt, boxes, labels, scores, images=None):
    n = len(boxes)
    return coco.coco_metrics(gt, np.zeros(n, int) if images is None else np.array(images),
                             np.array(labels), np.array(scores, float),
                             np.array(boxes, float).reshape(-1, 4))


def test_normalized_to_coco_xywh():
    # [ymin, xmin, ymax, xmax] = [0.1, 0.2, 0.5, 0.6] in a 200 wide, 100 high image:
    # x = 0.2 * 200 = 40, y = 0.1 * 100 = 10, w = 0.4 * 200 = 80, h = 0.4 * 100 = 40.
    xywh = coco.normalized_to_coco_xywh(np.array([[0.1, 0.2, 0.5, 0.6]]), 200, 100)
    np.testing.assert_allclose(xywh, [[40, 10, 80, 40]])


def test_perfect_detections_score_one_everywhere():
    gt = _gt([SMALL, MEDIUM, LARGE], [1, 2, 3])
    result = _metrics(gt, [SMALL, MEDIUM, LARGE], [1, 2, 3], [0.9, 0.8, 0.7])
    assert set(result) == set(coco.COCO_METRIC_NAMES)
    assert list(result.values()) == pytest.approx([1.0] * 12), result


def test_size_ranges_without_objects_are_nan():
    gt = _gt([LARGE], [1])
    result = _metrics(gt, [LARGE], [1], [0.9])
    assert math.isnan(result["APs"]) and math.isnan(result["APm"])
    assert math.isnan(result["ARs"]) and math.isnan(result["ARm"])
    assert [result["AP"], result["APl"], result["AR100"]] == pytest.approx([1.0] * 3)


def test_shifted_detection_matches_only_low_iou_thresholds():
    # A 100x100 box shifted 20 px: intersection 80*100, union 120*100 -> IoU 2/3.
    # Matched at IoU thresholds 0.50, 0.55, 0.60, 0.65 (4 of 10): AP 0.4, AP50 1, AP75 0.
    gt = _gt([[100, 100, 100, 100]], [1])
    result = _metrics(gt, [[120, 100, 100, 100]], [1], [0.9])
    assert result["AP50"] == pytest.approx(1.0)
    assert result["AP75"] == 0.0
    assert result["AP"] == pytest.approx(0.4)
    assert result["AR100"] == pytest.approx(0.4)


def test_detection_on_difficult_box_is_ignored():
    # Highest score on the difficult (crowd) box, then a perfect detection: ignored + TP -> AP 1.
    # Were it a false positive, precision at full recall would be 1/2 and AP 0.5.
    gt = _gt([MEDIUM, LARGE], [1, 1], difficult=[True, False])
    result = _metrics(gt, [MEDIUM, LARGE], [1, 1], [0.9, 0.8])
    assert result["AP"] == pytest.approx(1.0)
    # The difficult object is not a positive: missing it costs no recall.
    assert _metrics(gt, [LARGE], [1], [0.8])["AR100"] == pytest.approx(1.0)


def test_empty_detections_give_zeros():
    gt = _gt([SMALL, LARGE], [1, 2])
    result = _metrics(gt, [], [], [])
    assert math.isnan(result["APm"]) and math.isnan(result["ARm"])
    assert all(v == 0.0 for k, v in result.items() if k not in ("APm", "ARm")), result


def test_ap50_agrees_with_voc_all_point_ap_without_plus_one():
    # Separated objects (so COCO's "next unmatched gt" and VOC's "best gt or FP" rules agree), no
    # difficult boxes, < 100 detections per image and class. What still differs: COCO samples the
    # precision envelope at 101 recall points and matches at IoU >= 0.5 instead of > 0.5.
    rng = np.random.default_rng(3)
    num_images, size = 40, 400
    gt_image, gt_label, gt_box, det_image, det_label, det_score, det_box = ([] for _ in range(7))
    for image in range(num_images):
        for slot in range(rng.integers(1, 5)):  # objects on a grid of 100 px cells: never overlapping
            x, y = 100 * slot + 10, 100 * int(rng.integers(0, 4)) + 10
            box = [x, y, rng.uniform(30, 80), rng.uniform(30, 80)]
            label = int(rng.integers(1, 4))
            gt_image.append(image), gt_label.append(label), gt_box.append(box)
            for _ in range(rng.integers(0, 4)):
                det_image.append(image), det_score.append(rng.random())
                det_label.append(label if rng.random() < 0.8 else int(rng.integers(1, 4)))
                det_box.append(np.array(box) + rng.normal(0, 6, 4))
    gt_box, det_box = np.array(gt_box), np.array(det_box)
    gt = coco.build_ground_truth(CLASS_NAMES, [size] * num_images, [size] * num_images,
                                 np.array(gt_image), np.array(gt_label),
                                 np.zeros(len(gt_label), bool), gt_box)
    ap50 = coco.coco_metrics(gt, np.array(det_image), np.array(det_label), np.array(det_score),
                             det_box)["AP50"]

    def corners(xywh):
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)

    aps = voc.voc_average_precisions(3, det_image, det_label, det_score, corners(det_box),
                                     gt_image, gt_label, np.zeros(len(gt_label), bool),
                                     corners(gt_box), pixel_plus_one=False)["voc12"]
    voc_map = voc.mean_average_precision(aps)
    assert 0.3 < voc_map < 0.95  # a case with real misses and false positives
    assert ap50 == pytest.approx(voc_map, abs=0.005)  # measured gap here: 4e-4


def test_evaluator_coco_numbers_from_normalized_boxes():
    from metrics.evaluator import DetectionEvaluator

    # LARGE [x, y, w, h] = [300, 200, 200, 200] in 640x480 is yxyx [200/480, 300/640, 400/480, 500/640].
    large_yxyx = np.array([[200 / 480, 300 / 640, 400 / 480, 500 / 640]])
    evaluator = DetectionEvaluator(CLASS_NAMES)
    evaluator.add("000001", 480, 640, large_yxyx, [3], [False], large_yxyx, [0.9], [3])
    results = evaluator.evaluate(metrics=("coco",))
    assert results["coco"]["APs"] is None and results["coco"]["ARm"] is None
    assert results["coco"]["AP"] == pytest.approx(1.0)
    assert results["coco"]["APl"] == pytest.approx(1.0)
    assert "COCO: AP 1.0000" in evaluator.format_table(results)
