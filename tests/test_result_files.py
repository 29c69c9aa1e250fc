"""Result files: parse the written VOC lines and COCO JSON back and compare with what went in."""

import json
import os

import numpy as np
import pytest

from dataset import atomic
from metrics import coco, result_files

CLASS_NAMES = ("aeroplane", "bicycle", "bird")
IMAGE_IDS = ("000001", "000004")
# Two detections of class 1 (in image 1, then image 0) and one of class 3; class 2 has none.
DET_IMAGE_INDEX = np.array([1, 0, 0])
DET_CLASSES = np.array([1, 3, 1])
DET_SCORES = np.array([0.5, 0.123456789, 0.9])
DET_PIXEL_BOXES = np.array([[1, 2, 30, 40], [10.25, 20, 110, 220.75], [5, 6, 7, 8]], float)


def test_voc_files_parse_back(tmp_path):
    paths = result_files.write_voc_result_files(str(tmp_path), CLASS_NAMES, IMAGE_IDS,
                                                DET_IMAGE_INDEX, DET_CLASSES, DET_SCORES,
                                                DET_PIXEL_BOXES)
    assert [os.path.basename(p) for p in paths] == [
        "comp4_det_test_aeroplane.txt", "comp4_det_test_bicycle.txt", "comp4_det_test_bird.txt"]
    with open(paths[0]) as f:
        lines = f.read().splitlines()
    assert lines == ["000004 0.500000 1.0 2.0 30.0 40.0", "000001 0.900000 5.0 6.0 7.0 8.0"]
    with open(paths[1]) as f:
        assert f.read() == ""  # the devkit needs the file even without detections
    with open(paths[2]) as f:
        image_id, *numbers = f.read().split()
    assert image_id == "000001"
    # %.1f rounds half to even on the binary value: 10.25 -> 10.2, 220.75 -> 220.8.
    assert [float(x) for x in numbers] == [0.123457, 10.2, 20.0, 110.0, 220.8]
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)  # no temp files


def test_voc_file_name_options():
    assert result_files.voc_result_filename("dog", "comp3", "val") == "comp3_det_val_dog.txt"


def test_coco_json_and_id_map_parse_back(tmp_path):
    boxes_xywh = np.array([[0.0, 1.0, 29.0, 39.0], [9.254, 19.0, 100.751, 201.75], [4, 5, 3, 3]])
    results_path, map_path = result_files.write_coco_results(
        str(tmp_path), IMAGE_IDS, DET_IMAGE_INDEX, DET_CLASSES, DET_SCORES, boxes_xywh)
    with open(map_path) as f:
        assert json.load(f) == {"000001": 1, "000004": 2}
    with open(results_path) as f:
        results = json.load(f)
    assert results[0] == {"image_id": 2, "category_id": 1, "bbox": [0.0, 1.0, 29.0, 39.0],
                          "score": 0.5}
    assert results[1]["bbox"] == [9.25, 19.0, 100.75, 201.75]
    assert results[1]["score"] == 0.123457
    assert [r["image_id"] for r in results] == [2, 1, 1]
    assert all(isinstance(r["image_id"], int) and isinstance(r["category_id"], int) for r in results)


def test_coco_json_loads_in_pycocotools(tmp_path):
    gt = coco.build_ground_truth(CLASS_NAMES, [100], [200], np.array([0]), np.array([2]),
                                 np.array([False]), np.array([[10.0, 20.0, 50.0, 40.0]]))
    results_path, _ = result_files.write_coco_results(
        str(tmp_path), IMAGE_IDS[:1], np.array([0]), np.array([2]), np.array([0.7]),
        np.array([[10.0, 20.0, 50.0, 40.0]]))
    (loaded,) = gt.loadRes(results_path).dataset["annotations"]
    assert (loaded["image_id"], loaded["category_id"], loaded["score"]) == (1, 2, 0.7)
    assert loaded["bbox"] == [10.0, 20.0, 50.0, 40.0] and loaded["area"] == 2000.0


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    atomic.write_atomically(str(path), "old")

    with pytest.raises(TypeError):  # not text: fails inside the write, after the temp file exists
        atomic.write_atomically(str(path), b"bytes")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_evaluator_writes_original_pixel_boxes(tmp_path):
    from dataset.voc_boxes import voc_pixels_to_normalized
    from metrics.evaluator import DetectionEvaluator

    # A detection exactly on an XML box (48, 240, 195, 371) of a 353x500 image is written back with
    # the XML's pixel coordinates (the voc_boxes round trip), and as COCO [47, 239, 148, 132].
    xml_box = np.array([[48, 240, 195, 371]], float)
    boxes = voc_pixels_to_normalized(xml_box, 353, 500)
    evaluator = DetectionEvaluator(CLASS_NAMES)
    evaluator.add("000001", 500, 353, boxes, [2], [False], boxes, [0.75], [2])
    paths = evaluator.write_results(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == [
        "comp4_det_test_aeroplane.txt", "comp4_det_test_bicycle.txt", "comp4_det_test_bird.txt",
        result_files.COCO_RESULTS_FILENAME, result_files.IMAGE_ID_MAP_FILENAME]
    with open(paths[1]) as f:
        assert f.read() == "000001 0.750000 48.0 240.0 195.0 371.0\n"
    with open(paths[3]) as f:
        (result,) = json.load(f)
    assert result["bbox"] == pytest.approx([47, 239, 148, 132], abs=1e-4)
    assert (result["image_id"], result["category_id"]) == (1, 2)
