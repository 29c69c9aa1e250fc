"""metrics/tide.py: equal to the tidecv package on its stored outputs, and hand-computed small cases."""

import os

import numpy as np
import pytest

from metrics import tide

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tide.npz")


def _run(gts, dets, **kwargs):
    """gts rows [image, class, ignored, x, y, w, h]; dets rows [image, class, score, x, y, w, h]."""
    gts = np.asarray(gts, np.float64).reshape(-1, 7)
    dets = np.asarray(dets, np.float64).reshape(-1, 7)
    return tide.tide_errors(dets[:, 0].astype(int), dets[:, 1].astype(int), dets[:, 2], dets[:, 3:],
                            gts[:, 0].astype(int), gts[:, 1].astype(int), gts[:, 2] > 0, gts[:, 3:], **kwargs)


@pytest.mark.parametrize("name", ["plain", "ties"])
def test_equal_to_tidecv(name):
    # tests/reference/tide_fixture.py ran tidecv 1.0.1 on these detections (percentage points there).
    fixture = np.load(FIXTURE)
    result = _run(fixture[f"{name}_gts"], fixture[f"{name}_dets"])
    assert result["AP"] * 100 == pytest.approx(float(fixture[f"{name}_ap"]), abs=1e-9)
    main = [result["main"][kind] * 100 for kind in tide.ERROR_KINDS]
    np.testing.assert_allclose(main, fixture[f"{name}_main"], rtol=0, atol=1e-9)
    special = [result["special"][kind] * 100 for kind in tide.SPECIAL_KINDS]
    np.testing.assert_allclose(special, fixture[f"{name}_special"], rtol=0, atol=1e-9)
    assert [result["counts"][kind] for kind in tide.ERROR_KINDS] == fixture[f"{name}_counts"].tolist()
    assert all(v > 0 for v in fixture[f"{name}_main"])  # the fixture exercises every kind


def test_ties_fixture_needs_tidecv_order():
    # The "ties" set has tied scores whose TP/FP order decides the AP: the fixed runs' order (errors
    # before true positives) matters there, so this fixture would catch a different tie order.
    dets = np.load(FIXTURE)["ties_dets"]
    _, counts = np.unique(dets[:, 2], return_counts=True)
    assert counts.max() > 1


GT = [0, 1, 0, 0, 0, 10, 10]           # one class-1 box, 10 x 10 px at the origin


def test_localization_error_fixed_is_a_true_positive():
    result = _run([GT], [[0, 1, 0.9, 0, 0, 10, 4]])   # IoU 0.4 with the box: Loc
    assert result["counts"] == {"Cls": 0, "Loc": 1, "Both": 0, "Dupe": 0, "Bkg": 0, "Miss": 0}
    assert result["AP"] == 0.0
    assert result["main"]["Loc"] == pytest.approx(1.0)     # fixed: one true positive, AP 1
    assert result["main"]["Miss"] == 0.0                     # the box is "usable", not missed


def test_classification_error_moves_to_the_true_class():
    result = _run([GT], [[0, 2, 0.9, 0, 0, 10, 10]])
    assert result["counts"]["Cls"] == 1
    # Class 1: AP 0 (no detection); class 2: detections without ground truth count AP 0.
    assert result["AP"] == 0.0 and result["AP_per_class"] == {1: 0.0, 2: 0.0}
    # Fixed, class 1 gets a true positive (AP 1) and class 2 is empty, so it leaves the mean.
    assert result["main"]["Cls"] == pytest.approx(1.0)


def test_duplicate_and_missed_hand_computed():
    gts = [GT, [0, 1, 0, 50, 50, 10, 10], [1, 1, 0, 0, 0, 10, 10]]
    dets = [[0, 1, 0.9, 0, 0, 10, 10], [0, 1, 0.8, 0, 0, 10, 10], [0, 1, 0.7, 50, 50, 10, 10]]
    result = _run(gts, dets)
    assert result["counts"]["Dupe"] == 1 and result["counts"]["Miss"] == 1
    # TP, FP, TP over 3 ground truths: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3; the envelope is 1
    # up to recall 1/3 (34 of the 101 points), 2/3 up to 2/3 (33 points), then 0.
    assert result["AP"] == pytest.approx((34 + 33 * 2 / 3) / 101)
    # Without the duplicate: precision 1 up to recall 2/3 (67 points).
    assert result["main"]["Dupe"] == pytest.approx(67 / 101 - result["AP"])
    # Without the missed box (2 ground truths): TP, FP, TP gives 1 to recall 1/2, 2/3 after: 51 + 50 * 2/3.
    assert result["main"]["Miss"] == pytest.approx((51 + 50 * 2 / 3) / 101 - result["AP"])
    # FalsePos: true positives first, recall 2/3 at precision 1; FalseNeg: recall 1 at the end.
    assert result["special"]["FalsePos"] == pytest.approx(67 / 101 - result["AP"])
    assert result["special"]["FalseNeg"] == pytest.approx((51 + 50 * 2 / 3) / 101 - result["AP"])


def test_background_both_and_ignore_regions():
    gts = [GT, [0, 2, 1, 100, 100, 40, 40]]                       # and a class-2 ignore region
    dets = [[0, 1, 0.9, 0, 0, 10, 10],                            # TP
            [0, 1, 0.8, 200, 200, 10, 10],                        # far from everything: Bkg
            [0, 2, 0.7, 0, 0, 10, 4],                             # other class, IoU 0.4: Both
            [0, 2, 0.6, 110, 110, 10, 10],                        # inside the class-2 region: ignored
            [1, 1, 0.5, 0, 0, 10, 10]]                            # an image without ground truth: Bkg
    result = _run(gts, dets)
    assert result["outcome"].tolist() == [tide.TRUE_POSITIVE, tide.FALSE_POSITIVE, tide.FALSE_POSITIVE,
                                          tide.IGNORED, tide.FALSE_POSITIVE]
    kinds = [tide.ERROR_KINDS[k] if k >= 0 else None for k in result["det_error"]]
    # The ignored detection still gets its error, as in tidecv (here: no box of any class near it).
    assert kinds == [None, "Bkg", "Both", "Bkg", "Bkg"]


def test_at_most_100_detections_per_image():
    dets = [[0, 1, 0.5 + i / 1000, 0, 0, 10, 10] for i in range(100)] + [[0, 1, 0.1, 0, 0, 10, 10]]
    result = _run([GT], dets)
    assert (result["outcome"] == tide.DROPPED).tolist() == [False] * 100 + [True]
    assert result["outcome"][99] == tide.TRUE_POSITIVE                 # the best score matches first
    assert result["counts"]["Dupe"] == 99


def test_no_detections_everything_missed():
    result = _run([GT, [1, 2, 0, 0, 0, 5, 5]], [])
    assert result["counts"]["Miss"] == 2 and result["AP"] == 0.0
    # Fixing every miss leaves no class with data; tidecv divides by zero there, we count mAP 0.
    assert result["main"]["Miss"] == 0.0


def test_paired_iou_is_pycocotools():
    # 10x10 and 10x5 boxes overlapping in 5x5: union 100 + 50 - 25; crowd: over the detection's 50.
    det, gt = [[5, 5, 10, 5]], [[0, 0, 10, 10]]
    assert tide.coco_paired_iou(det, gt)[0] == pytest.approx(25 / 125)
    assert tide.coco_paired_iou(det, gt, crowd=True)[0] == pytest.approx(25 / 50)
    assert tide.coco_paired_iou([[20, 20, 5, 5]], gt)[0] == 0.0
