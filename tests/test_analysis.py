"""metrics/analysis.py on hand-built detections: PR and best F1, the confusion matrix, AP by size."""

import json

import numpy as np
import pytest

from metrics import analysis
from metrics.evaluator import DetectionEvaluator

NAMES = ("circle", "square")


def _evaluation_set():
    """One 100 x 100 image: a 20 x 20 px circle (small) and a 50 x 50 px square (medium); detections:
    a circle on the circle (0.9, true positive), a circle on the square (0.8, a class error), a 10 x 10
    px square on nothing (0.4, background); a second image with one missed circle."""
    evaluator = DetectionEvaluator(NAMES)
    evaluator.add("a", 100, 100, [[0, 0, 0.2, 0.2], [0.5, 0.5, 1, 1]], [1, 2], [False, False],
                  [[0, 0, 0.2, 0.2], [0.5, 0.5, 1, 1], [0.3, 0.3, 0.4, 0.4]], [0.9, 0.8, 0.4], [1, 1, 2])
    evaluator.add("b", 100, 100, [[0.1, 0.1, 0.6, 0.3]], [1], [False], np.zeros((0, 4)), [], [])
    return evaluator.evaluation_set()


def test_numbers_by_hand():
    numbers, arrays = analysis.analyze(_evaluation_set(), NAMES, score_threshold=0.3)
    json.dumps(numbers, allow_nan=False)   # every number is JSON
    circle = numbers["pr"]["iou50"]["per_class"]["circle"]
    # circles by score: TP (0.9), FP (0.8) over 2 ground truths: P 1, 1/2; R 1/2, 1/2; F1 2/3, 1/2.
    assert circle["best_f1"] == pytest.approx(2 / 3) and circle["best_threshold"] == pytest.approx(0.9)
    assert circle["num_gt"] == 2 and circle["num_detections"] == 2
    assert circle["AP"] == pytest.approx(51 / 101)    # precision 1 up to recall 1/2
    counts = arrays["pr_curves"]["iou50"]["circle"]["counts"]
    assert counts["true_positives"][85] == 1 and counts["false_positives"][85] == 0   # score >= 0.85
    assert counts["false_positives"][50] == 1 and counts["false_negatives"][50] == 1
    assert counts["precision"][100] == 1.0 and counts["true_positives"][100] == 0     # none >= 1.0
    overall = numbers["pr"]["iou50"]["overall"]
    assert overall["num_gt"] == 3 and overall["num_detections"] == 3

    # Rows true class, columns detected, 0 = background: the circle found, the square taken for a
    # circle, a square detected on nothing, the second image's circle missed.
    assert numbers["confusion"]["labels"] == ["background", "circle", "square"]
    assert numbers["confusion"]["matrix"] == [[0, 0, 1], [1, 1, 0], [0, 1, 0]]

    tide = numbers["tide"]
    assert tide["counts"] == {"Cls": 1, "Loc": 0, "Both": 0, "Dupe": 0, "Bkg": 1, "Miss": 1}
    assert tide["where"]["Cls"]["top_confusion"] == ["circle", "square"]
    assert tide["where"]["Miss"]["top_class"] == "circle"
    assert tide["where"]["Miss"]["small_fraction"] == 1.0   # 50 x 20 px = 1000 px2, under 32 x 32
    # Sizes: the found circle is small (400 px2); the missed circle 1000 px2 is small too; the square
    # 2500 px2 is medium. Small circles: TP then nothing (the 0.8 circle box is 2500 px2, outside).
    assert numbers["ap_by_size"]["small"]["per_class"]["circle"] == pytest.approx(51 / 101)
    assert numbers["ap_by_size"]["small"]["per_class"]["square"] is None
    # Medium squares: one ground truth, its only square detection is small (ignored): AP 0.
    assert numbers["ap_by_size"]["medium"]["per_class"] == {"circle": None, "square": 0.0}
    assert numbers["ap_by_size"]["large"]["AP"] is None
    # Aspect h/w: the missed circle is 50 x 20 px (h/w 2.5, tall); the others square.
    assert numbers["ap_by_aspect"]["tall"]["num_gt"] == 1
    assert numbers["ap_by_aspect"]["tall"]["per_class"]["circle"] == 0.0
    # Per image, "missed" is every box no true positive found (the square too, though TIDE calls its
    # detection a class error rather than the box a miss).
    assert numbers["worst_images"] == [{"image_id": "a", "false_positives": 2, "missed": 1},
                                       {"image_id": "b", "false_positives": 0, "missed": 1}]


def test_score_threshold_moves_errors():
    # At 0.85 only the true positive is confident: the square is missed, nothing fires on background.
    numbers, _ = analysis.analyze(_evaluation_set(), NAMES, score_threshold=0.85)
    assert numbers["confusion"]["matrix"] == [[0, 0, 0], [1, 1, 0], [1, 0, 0]]
    assert numbers["worst_images"][0] == {"image_id": "a", "false_positives": 0, "missed": 1}


def test_confusion_prefers_the_own_class():
    # A circle detection overlapping a square (IoU 1) and a circle (IoU 0.6): it is the circle's.
    evaluator = DetectionEvaluator(NAMES)
    evaluator.add("a", 100, 100, [[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.3]], [2, 1], [False, False],
                  [[0, 0, 0.5, 0.5]], [0.9], [1])
    numbers, _ = analysis.analyze(evaluator.evaluation_set(), NAMES)
    assert numbers["confusion"]["matrix"] == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]
