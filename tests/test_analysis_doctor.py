"""apps/doctor/model_doctor.py: the doctor's folder, report and TensorBoard data; every detection source
(a detector through the door's contract, a COCO results JSON against records or an instances file)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from apps.doctor import model_doctor
from dataset import fields, reader
from engine import serving, summaries
from metrics import analysis
from metrics.evaluator import DetectionEvaluator
from tests.test_analysis import NAMES, _evaluation_set


def _hand_evaluator():
    data = _evaluation_set()
    evaluator = DetectionEvaluator(NAMES)
    for k, image_id in enumerate(data.image_ids):
        g, d = data.gt_image_index == k, data.det_image_index == k
        evaluator.add(image_id, 100, 100, data.gt_boxes[g], data.gt_labels[g], data.gt_difficult[g],
                      data.det_boxes[d], data.det_scores[d], data.det_classes[d])
    return evaluator


def _events(folder):
    """{tag: (plugin name, tensor)} of every summary in the event files under `folder`."""
    found = {}
    for name in os.listdir(folder):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                found[value.tag] = (value.metadata.plugin_data.plugin_name, tf.make_ndarray(value.tensor))
    return found


def test_pr_curve_is_tensorboards_raw_data(tmp_path):
    scores, _, _, tp = analysis.precision_recall([0.9, 0.8, 0.4], [True, False, True], 4)
    counts = analysis.pr_curve_counts(scores, tp, 4)
    writer = summaries.Writer(str(tmp_path))
    writer.pr_curve(7, "doctor/pr", counts)
    writer.close()
    plugin, tensor = _events(str(tmp_path))["doctor/pr/pr_curves"]   # raw_data_pb's tag
    # The pr_curves plugin's layout: [6, thresholds] rows TP, FP, TN, FN, precision, recall.
    assert plugin == "pr_curves" and tensor.shape == (6, 101)
    assert tensor[0, [0, 50, 85, 100]].tolist() == [2, 1, 1, 0]      # scores >= 0, 0.5, 0.85, 1.0
    assert tensor[1, [0, 50, 85]].tolist() == [1, 1, 0]
    assert tensor[3, 0] == 2 and tensor[4, 0] == pytest.approx(2 / 3) and tensor[5, 0] == 0.5


@pytest.mark.slow  # 8-16 s here: six PNGs drawn
def test_doctor_folder_report_and_tensorboard(tmp_path):
    out = str(tmp_path / "doctor")
    gray = {"a": np.full((100, 100, 3), 128, np.uint8)}
    numbers, lines = model_doctor.run(out, _hand_evaluator(), "hand-built", images_fn=lambda ids: gray)
    # By hand: circles TP, FP over 2 boxes (AP 51/101), squares one FP over 1 box (AP 0): mAP 0.2525.
    # Fixing the class error makes the 0.8 circle a square true positive: squares AP 1, mAP 0.7525.
    assert numbers["tide"]["largest"] == "Cls" and numbers["tide"]["dAP"]["Cls"] == pytest.approx(0.5)
    assert lines[0] == ("Classification errors (right place, wrong class) cost 0.500 AP50 (TIDE AP50 "
                        "0.252, 1 of them); most often square taken for circle (1 of 1).")
    assert lines[1].startswith("Then: missed objects 0.248 (1), ")
    with open(os.path.join(out, model_doctor.REPORT_FILENAME)) as f:
        assert f.read().splitlines() == lines
    with open(os.path.join(out, model_doctor.NUMBERS_FILENAME)) as f:
        assert json.load(f)["tide"] == json.loads(json.dumps(numbers["tide"]))
    for name in ("summary", "tide", "pr_curves", "confusion", "ap_by_size", "worst_images"):
        assert os.path.getsize(numbers["files"][name]) > 1000, name
    events = _events(os.path.join(out, model_doctor.TENSORBOARD_SUBDIR))
    assert events["model_doctor/pr_iou50/circle/pr_curves"][0] == "pr_curves"
    assert events["model_doctor/pr_iou75/all/pr_curves"][1].shape == (6, 101)
    assert float(events["model_doctor/tide/dAP_Cls"][1]) == pytest.approx(0.5)
    assert events["model_doctor/summary"][0] == "images"
    # A folder that is not the doctor's (nor empty) is refused before anything is drawn.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a model doctor folder"):
        model_doctor.run(str(tmp_path / "other"), _hand_evaluator(), "x")


class _EchoDetector:
    """The door's contract (engine/serving.Detector) returning each record's boxes as detections."""

    def __init__(self, data_dir):
        self.class_names = tuple(model_doctor.label_map.read_label_map(
            os.path.join(data_dir, model_doctor.label_map.LABEL_MAP_FILENAME)))
        self.path = "echo"
        self.truth = [(e[fields.BOXES].numpy(), e[fields.LABELS].numpy()) for e in reader.read_split(data_dir, "val")]
        self.calls = 0

    def __call__(self, image):
        assert image.dtype == np.uint8 and image.ndim == 3
        boxes, labels = self.truth[self.calls]
        self.calls += 1
        return serving.Detections(boxes.astype(np.float32), np.linspace(0.9, 0.5, len(labels), dtype=np.float32),
                                  labels.astype(np.int32))


@pytest.mark.slow  # reads the sample's records three times
def test_detector_and_results_file_routes_agree(sample_records, tmp_path):
    detector = _EchoDetector(sample_records)
    evaluator = model_doctor.evaluator_from_detector(detector, sample_records, "val")
    assert detector.calls == evaluator.num_images == 80
    # Perfect detections: every AP 1, nothing to fix (difficult boxes are ignore regions).
    numbers, _ = analysis.analyze(evaluator.evaluation_set(), evaluator.class_names)
    assert numbers["tide"]["AP50"] == pytest.approx(1.0)
    assert set(numbers["tide"]["dAP"].values()) == {0.0}
    # Its results JSON (and image_id_map.json) read back against the records: the same numbers.
    evaluator.write_results(str(tmp_path))
    again = model_doctor.evaluator_from_results(os.path.join(str(tmp_path), "coco_detections.json"),
                                                sample_records, "val")
    assert again.evaluate(("voc07",)) == evaluator.evaluate(("voc07",))
    numbers_again, _ = analysis.analyze(again.evaluation_set(), again.class_names)
    assert numbers_again["tide"]["AP50"] == pytest.approx(1.0)


def test_results_against_an_instances_file(tmp_path):
    instances = {"images": [{"id": 5, "height": 100, "width": 200}, {"id": 9, "height": 50, "width": 50}],
                 "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}],
                 "annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [10, 10, 50, 40],
                                  "area": 2000, "iscrowd": 0},
                                 {"id": 2, "image_id": 5, "category_id": 1, "bbox": [100, 0, 100, 100],
                                  "area": 10000, "iscrowd": 1},
                                 {"id": 3, "image_id": 9, "category_id": 1, "bbox": [0, 0, 20, 20],
                                  "area": 400, "iscrowd": 0}]}
    results = [{"image_id": 5, "category_id": 3, "bbox": [10, 10, 50, 40], "score": 0.9},
               {"image_id": 5, "category_id": 1, "bbox": [120, 10, 50, 50], "score": 0.8},   # in the crowd
               {"image_id": 9, "category_id": 3, "bbox": [0, 0, 20, 20], "score": 0.7}]      # dog as cat
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "results.json").write_text(json.dumps(results))
    evaluator = model_doctor.evaluator_from_results(str(tmp_path / "results.json"), None,
                                                    annotations_file=str(tmp_path / "instances.json"))
    # Classes by category id: dog (1) is class 1, cat (3) class 2.
    assert evaluator.class_names == ("dog", "cat")
    numbers, arrays = analysis.analyze(evaluator.evaluation_set(), evaluator.class_names)
    assert numbers["tide"]["counts"]["Cls"] == 1
    assert arrays["outcome"].tolist() == [analysis.tide.TRUE_POSITIVE, analysis.tide.IGNORED,
                                          analysis.tide.FALSE_POSITIVE]
    assert numbers["ap_by_size"]["small"]["num_gt"] == 1   # the 400 px2 dog; the crowd is not counted
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 77, "category_id": 3, "bbox": [0, 0, 1, 1],
                                                    "score": 0.5}]))
    with pytest.raises(ValueError, match="1 image ids are not in"):
        model_doctor.evaluator_from_results(str(tmp_path / "bad.json"), None,
                                            annotations_file=str(tmp_path / "instances.json"))


def test_results_file_mistakes_are_one_line(tmp_path):
    (tmp_path / "broken.json").write_text('[{"image_id": 1}]')
    with pytest.raises(ValueError, match="broken.json: not a COCO results JSON .*lacks"):
        model_doctor.evaluator_from_results(str(tmp_path / "broken.json"), str(tmp_path))
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(ValueError, match="text.json: not a COCO results JSON"):
        model_doctor.evaluator_from_results(str(tmp_path / "text.json"), str(tmp_path))
