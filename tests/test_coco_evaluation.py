"""COCO-protocol evaluation: records vs the official file give identical numbers; the results JSON
carries the original ids and loads with COCO.loadRes against the file."""

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dataset import coco, coco_convert, fields
from engine import evaluation
from metrics import result_files
from metrics.evaluator import DetectionEvaluator
from model import presets
from preprocessing import inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL_JSON = os.path.join(REPO, "dataset", "sample", "annotations", "instances_val.json")
SAMPLE_IMAGES = os.path.join(REPO, "dataset", "sample", "JPEGImages")


@pytest.fixture(scope="module")
def val_records(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("coco_val"))
    coco_convert.convert({"val": coco_convert.CocoSplit(VAL_JSON, SAMPLE_IMAGES)}, out, {"val": 2},
                         num_threads=2)
    return out


def _fake_detections(labels, rng, num_classes):
    """Per image: every gt box jittered by 8% of its sides (10% with a wrong class) plus two random
    boxes; random scores."""
    valid = labels[fields.LABELS] > 0
    batch, k = valid.shape[0], valid.shape[1] + 2
    boxes = np.zeros([batch, k, 4], np.float32)
    classes = np.zeros([batch, k], np.int64)
    scores = np.zeros([batch, k], np.float32)
    counts = []
    for i in range(batch):
        gt = labels[fields.BOXES][i][valid[i]]
        sides = np.tile(gt[:, 2:] - gt[:, :2], 2)
        noise = rng.normal(0, 0.08, gt.shape) * sides  # IoUs spread over COCO's 0.5:0.95
        mins = rng.uniform(0, 0.7, (2, 2))
        fake = np.concatenate([np.clip(gt + noise, 0, 1),
                               np.concatenate([mins, mins + rng.uniform(0.05, 0.3, (2, 2))], 1)])
        fake = np.concatenate([np.minimum(fake[:, :2], fake[:, 2:]), np.maximum(fake[:, :2], fake[:, 2:])], 1)
        cls = np.concatenate([labels[fields.LABELS][i][valid[i]], rng.integers(1, num_classes + 1, 2)])
        flip = rng.uniform(size=len(cls)) < 0.1
        cls[flip] = rng.integers(1, num_classes + 1, flip.sum())
        n = len(cls)
        boxes[i, :n], classes[i, :n], scores[i, :n] = fake, cls, rng.uniform(0.01, 1, n)
        counts.append(n)
    return {fields.DETECTION_BOXES: boxes, fields.DETECTION_SCORES: scores,
            fields.DETECTION_CLASSES: classes, fields.NUM_DETECTIONS: np.array(counts)}


@pytest.fixture(scope="module")
def evaluator(val_records):
    category_map = coco.find_category_map(val_records)
    config = presets.get("ssd300_vgg16_coco", category_map.num_classes, image_size=32)
    ev = DetectionEvaluator(category_map.names, category_map)
    rng = np.random.default_rng(7)
    for _, labels in inputs.eval_input_fn(val_records, config, batch_size=16):
        labels = {k: v.numpy() for k, v in labels.items()}
        evaluation.add_batch(ev, labels, _fake_detections(labels, rng, category_map.num_classes))
    return ev


def test_records_and_official_file_give_identical_coco_numbers(evaluator):
    from_records = evaluator.evaluate(("coco",))["coco"]
    from_file = evaluator.evaluate(("coco",), annotations_file=VAL_JSON)["coco"]
    assert from_records == from_file, (from_records, from_file)
    # Not a trivial case: noisy boxes and wrong classes score well below 1, and all three size
    # ranges have ground truth.
    assert 0.2 < from_records["AP"] < 0.9 and all(from_records[k] is not None for k in ("APs", "APm", "APl"))


def test_the_areas_and_crowd_flags_of_the_records_are_what_counts(evaluator):
    data = evaluator.evaluation_set()
    with open(VAL_JSON) as f:
        annotations = json.load(f)["annotations"]
    assert data.gt_is_crowd.sum() == sum(a["iscrowd"] for a in annotations) > 0
    np.testing.assert_array_equal(np.sort(data.gt_area), np.sort([a["area"] for a in annotations]))
    # With box areas and no crowd flags (what VOC-style ground truth would give) the numbers differ.
    boxes = data.gt_coco_xywh()
    from metrics import coco as coco_metrics
    plain = coco_metrics.build_ground_truth(
        evaluator.class_names, data.heights, data.widths, data.gt_image_index, data.gt_labels,
        data.gt_difficult, boxes, image_ids=evaluator.coco_image_ids(data),
        category_ids=evaluator.coco_category_ids())
    numbers = coco_metrics.coco_metrics(plain, data.det_image_index, data.det_classes, data.det_scores,
                                        data.det_coco_xywh(), image_ids=evaluator.coco_image_ids(data),
                                        category_ids=evaluator.coco_category_ids())
    assert numbers["AP"] != pytest.approx(evaluator.evaluate(("coco",))["coco"]["AP"], abs=1e-6)


def test_results_json_has_original_ids_and_loads_with_loadres(evaluator, tmp_path):
    paths = evaluator.write_results(str(tmp_path))
    results_path = os.path.join(str(tmp_path), result_files.COCO_RESULTS_FILENAME)
    assert results_path in paths
    assert not os.path.exists(os.path.join(str(tmp_path), result_files.IMAGE_ID_MAP_FILENAME))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(VAL_JSON)
        dt = gt.loadRes(results_path)
    with open(results_path) as f:
        results = json.load(f)
    data = evaluator.evaluation_set()
    assert len(results) == data.det_scores.size
    assert {r["image_id"] for r in results} <= set(gt.getImgIds())
    assert {r["category_id"] for r in results} <= set(gt.getCatIds())
    assert 251 in {r["image_id"] for r in results}  # the sample's val ids start at 251, not 1
    assert {r["category_id"] for r in results} - set(range(1, 9))  # COCO ids with gaps, e.g. 18
    # The file alone, scored by plain pycocotools, reproduces the in-memory numbers (up to the
    # 0.01 px / 1e-6 rounding of the file).
    cocoeval = COCOeval(gt, dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    assert cocoeval.stats[0] == pytest.approx(evaluator.evaluate(("coco",))["coco"]["AP"], abs=2e-3)


def test_annotations_file_needs_coco_records_and_matching_categories(evaluator, tmp_path):
    voc_style = DetectionEvaluator(evaluator.class_names)
    voc_style.add("000001", 10, 10, np.zeros([0, 4]), [], [], np.zeros([0, 4]), [], [])
    with pytest.raises(ValueError, match="needs COCO records"):
        voc_style.evaluate(("coco",), annotations_file=VAL_JSON)
    with open(VAL_JSON) as f:
        data = json.load(f)
    data["categories"][0]["id"] = 2
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="categories differ"):
        evaluator.evaluate(("coco",), annotations_file=str(other))
    with pytest.raises(ValueError, match="file not found"):
        evaluator.evaluate(("coco",), annotations_file=str(tmp_path / "missing.json"))


def test_voc_metrics_on_coco_records_ignore_crowd_boxes(evaluator):
    results = evaluator.evaluate(("voc12",))
    data = evaluator.evaluation_set()
    expected = np.bincount(data.gt_labels[~data.gt_is_crowd], minlength=len(evaluator.class_names) + 1)[1:]
    assert list(results["num_positives"].values()) == expected.tolist()
    assert all(not math.isnan(v) for v in results["voc12"]["AP"].values())
