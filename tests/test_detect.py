"""detect_ssd.py: input expansion, detection records (normalized and VOC pixel boxes), drawn images and
detections.json from a checkpoint, a SavedModel and a .tflite file, unreadable files skipped and
counted, a record split with ground truth into TensorBoard images with captions of the counts."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import detect_ssd
from conftest import REPO_ROOT
from dataset import label_map
from engine import cli, serving, tflite_export
from test_export import CLASS_NAMES, write_random_model_dir

SAMPLE_JPEG = os.path.join(REPO_ROOT, "dataset", "sample", "JPEGImages", "000001.jpg")


@pytest.fixture(scope="module")
def model_and_export(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("detect_model_dir")
    write_random_model_dir(model_dir, seed=1)
    module, _, _, _ = serving.from_checkpoint(str(model_dir))
    export_dir = serving.export(module, CLASS_NAMES, str(tmp_path_factory.mktemp("detect_export") / "ssd"))
    # The any-size file: its detections equal the SavedModel's within 1e-4 on images of any size.
    tflite = tflite_export.export(module, CLASS_NAMES, str(tmp_path_factory.mktemp("detect_tflite") / "tflite"),
                                  ["float32"], dynamic_input=True)
    return str(model_dir), export_dir, tflite["float32"]


@pytest.fixture()
def image_dir(tmp_path):
    """Two readable images of different sizes and formats, one corrupt file, one non-image name."""
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(SAMPLE_JPEG, folder / "a.jpg")
    Image.fromarray(np.full((40, 90, 3), 200, np.uint8)).save(folder / "b.png")
    (folder / "c.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_expand_inputs_directories_globs_and_plain_paths(image_dir):
    folder = str(image_dir)
    assert detect_ssd.expand_inputs([folder]) == [os.path.join(folder, n) for n in ("a.jpg", "b.png", "c.jpg")]
    assert detect_ssd.expand_inputs([os.path.join(folder, "*.png"), "missing.jpg"]) == [
        os.path.join(folder, "b.png"), "missing.jpg"]
    with pytest.raises(ValueError, match=r"\*\.gif' matches no file"):  # a typo is no empty success
        detect_ssd.expand_inputs([os.path.join(folder, "*.gif")])


def test_detections_record_threshold_names_and_pixel_boxes():
    """serving.detections_record: the one builder of detections.json's (and the video JSON lines') record."""
    detections = serving.Detections(
        boxes=np.array([[0.1, 0.2, 0.5, 1.0], [0, 0, 1, 1], [0, 0, 0.5, 0.5]], np.float32),
        scores=np.array([0.9, 0.5, 0.2], np.float32), classes=np.array([2, 3, 1], np.int32))
    record = serving.detections_record(detections, CLASS_NAMES, height=100, width=200, min_score=0.3)
    assert sorted(record) == ["detections", "height", "width"] and (record["width"], record["height"]) == (200, 100)
    records = record["detections"]
    assert [(r["class_id"], r["class_name"]) for r in records] == [(2, "dog"), (3, "person")]
    assert sorted(records[0]) == ["box", "box_pixels", "class_id", "class_name", "score"]
    assert records[0]["score"] == pytest.approx(0.9)
    assert records[0]["box"] == pytest.approx([0.1, 0.2, 0.5, 1.0])
    # VOC 1-based inclusive: xmin = 0.2 * 200 + 1, ymin = 0.1 * 100 + 1, xmax = 1.0 * 200, ymax = 0.5 * 100.
    assert records[0]["box_pixels"] == pytest.approx([41, 11, 200, 50])
    assert records[1]["box_pixels"] == pytest.approx([1, 1, 200, 100])
    only_person = serving.detections_record(detections, CLASS_NAMES, 100, 200, min_score=0.3, class_ids={3})
    assert [r["class_name"] for r in only_person["detections"]] == ["person"]
    assert json.loads(json.dumps(record)) == record      # plain Python numbers: JSON as they are


@pytest.mark.slow
def test_checkpoint_saved_model_and_tflite_give_the_same_files(model_and_export, image_dir, tmp_path):
    model_dir, export_dir, tflite_path = model_and_export
    paths = detect_ssd.expand_inputs([str(image_dir)]) + [str(tmp_path / "missing.jpg")]
    results = {}
    for source, path, kind in (("checkpoint", model_dir, "checkpoint"), ("saved", export_dir, "saved_model"),
                               ("tflite", tflite_path, "tflite")):
        detector = serving.load_detector(path)
        assert detector.class_names == CLASS_NAMES and detector.kind == kind
        output_dir = tmp_path / source
        records, skipped = detect_ssd.detect_files(paths, detector, str(output_dir), 0.05)
        assert skipped == 2   # c.jpg (corrupt) and missing.jpg
        assert sorted(os.listdir(output_dir)) == ["a_detections.png", "b_detections.png", "detections.json"]
        assert json.loads((output_dir / "detections.json").read_text()) == records
        assert Image.open(output_dir / "b_detections.png").size == (90, 40)   # the original size
        results[source] = records

    assert [(r["file"], r["width"], r["height"]) for r in results["saved"]] == [
        (paths[0], 402, 282), (paths[1], 90, 40)]
    assert all(r["detections"] for r in results["saved"])
    for ours, theirs in zip(results["checkpoint"], results["saved"]):
        _assert_same_records(ours["detections"], theirs["detections"], 1e-5)
    # The photo only: b.png is one flat grey, where many anchors score exactly alike and the two
    # runtimes' top-k / NMS may keep different members of a tie.
    _assert_same_records(results["tflite"][0]["detections"], results["saved"][0]["detections"], 1e-4)


def _assert_same_records(ours, theirs, tolerance):
    """One-to-one: every detection of `theirs` has one in `ours` of its class with box and score within
    `tolerance` (matched, not by position: near-equal scores may swap places between runtimes)."""
    assert len(ours) == len(theirs)
    free = list(range(len(ours)))
    for d in theirs:
        match = next(i for i in free + [None] if i is None or (
            ours[i]["class_id"] == d["class_id"] and
            np.abs(np.array(ours[i]["box"] + [ours[i]["score"]]) - (d["box"] + [d["score"]])).max() <= tolerance))
        assert match is not None, d
        free.remove(match)


@pytest.mark.slow
def test_script_names_skipped_files_and_exits_nonzero(model_and_export, image_dir, tmp_path):
    _, export_dir, _ = model_and_export
    output_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "detect_ssd.py"), "--saved_model_dir", export_dir,
         "--input", f"{image_dir}/c.jpg,{image_dir}/b.png", "--output_dir", str(output_dir),
         "--output_format", "jpg"],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == cli.EXIT_SKIPPED == 3, result.stderr[-3000:]
    assert f"skipping {image_dir}/c.jpg" in result.stderr
    assert "1 files skipped" in result.stderr
    assert sorted(os.listdir(output_dir)) == ["b_detections.jpg", "detections.json"]


@pytest.mark.slow
def test_record_split_with_ground_truth_into_tensorboard(model_and_export, sample_records, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    _, _, three_class_tflite = model_and_export
    sample_classes = label_map.read_label_map(os.path.join(sample_records, label_map.LABEL_MAP_FILENAME))
    write_random_model_dir(tmp_path / "model_dir", seed=3, class_names=sample_classes)
    module, _, _, _ = serving.from_checkpoint(str(tmp_path / "model_dir"))
    tflite_path = tflite_export.export(module, sample_classes, str(tmp_path / "tflite"), ["float32"])["float32"]
    output_dir, board = tmp_path / "split", tmp_path / "board"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "detect_ssd.py"), "--model", tflite_path,   # the door's flag
         "--data_dir", sample_records, "--split", "val", "--max_images", "3", "--output_dir", str(output_dir),
         "--tensorboard_dir", str(board), "--score_threshold", "0.5"],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((output_dir / "detections.json").read_text())
    assert len(records) == 3 and all(r["ground_truth"] for r in records)
    assert all(d["score"] >= 0.5 for r in records for d in r["detections"])
    accumulator = event_accumulator.EventAccumulator(str(board), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = sorted(accumulator.Tags()["tensors"])
    assert tags == sorted("detections/" + os.path.splitext(r["file"])[0] for r in records)
    for record in records:
        tag = "detections/" + os.path.splitext(record["file"])[0]
        description = accumulator.SummaryMetadata(tag).summary_description
        drawn = min(len(record["detections"]), 20)
        assert (f"{len(record['detections'])} detections >= 0.50 ({drawn} drawn" in description and
                f"{len(record['ground_truth'])} ground-truth boxes" in description), description
        # The event's image is the drawn image written as a file.
        png = accumulator.Tensors(tag)[0].tensor_proto.string_val[2]
        written = output_dir / (os.path.splitext(record["file"])[0] + "_detections.png")
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(Image.open(written)))
    bad = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "detect_ssd.py"), "--tflite_path", tflite_path,
                          "--output_dir", str(tmp_path / "x")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "detect_ssd.py: error: give exactly one of --input (image files) and --data_dir (a record split)")
    other_classes = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "detect_ssd.py"), "--tflite_path", three_class_tflite,
         "--data_dir", sample_records, "--output_dir", str(tmp_path / "y")], capture_output=True, text=True,
        cwd=REPO_ROOT)
    assert other_classes.returncode == 2 and "Traceback" not in other_classes.stderr
    assert other_classes.stderr.strip().splitlines()[-1].startswith("detect_ssd.py: error: label map mismatch")
