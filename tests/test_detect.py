"""detect_ssd.py: input expansion, detection records (normalized and VOC pixel boxes), drawn images and
detections.json from a checkpoint and from a SavedModel, unreadable files skipped and counted."""

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
from dataset import fields
from engine import serving
from test_export import CLASS_NAMES, write_random_model_dir

SAMPLE_JPEG = os.path.join(REPO_ROOT, "dataset", "sample", "JPEGImages", "000001.jpg")


@pytest.fixture(scope="module")
def model_and_export(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("detect_model_dir")
    config = write_random_model_dir(model_dir, seed=1)
    module, _, _, _ = serving.from_checkpoint(str(model_dir))
    export_dir = serving.export(module, config, CLASS_NAMES, str(tmp_path_factory.mktemp("detect_export") / "ssd"))
    return str(model_dir), export_dir


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


def test_detection_records_threshold_names_and_pixel_boxes():
    detections = {
        fields.NUM_DETECTIONS: np.float32(3),
        fields.DETECTION_SCORES: np.array([0.9, 0.5, 0.2, 0.0], np.float32),
        fields.DETECTION_CLASSES: np.array([2, 3, 1, 0], np.float32),
        fields.DETECTION_BOXES: np.array([[0.1, 0.2, 0.5, 1.0], [0, 0, 1, 1], [0, 0, 0.5, 0.5], [0, 0, 0, 0]],
                                         np.float32),
    }
    records = detect_ssd.detection_records(detections, CLASS_NAMES, width=200, height=100, score_threshold=0.3)
    assert [(r["class_id"], r["class_name"]) for r in records] == [(2, "dog"), (3, "person")]
    assert records[0]["score"] == pytest.approx(0.9)
    assert records[0]["box"] == pytest.approx([0.1, 0.2, 0.5, 1.0])
    # VOC 1-based inclusive: xmin = 0.2 * 200 + 1, ymin = 0.1 * 100 + 1, xmax = 1.0 * 200, ymax = 0.5 * 100.
    assert records[0]["box_pixels"] == pytest.approx([41, 11, 200, 50])
    assert records[1]["box_pixels"] == pytest.approx([1, 1, 200, 100])


def test_checkpoint_and_saved_model_give_the_same_files(model_and_export, image_dir, tmp_path):
    model_dir, export_dir = model_and_export
    paths = detect_ssd.expand_inputs([str(image_dir)]) + [str(tmp_path / "missing.jpg")]
    results = {}
    for source, kwargs in (("checkpoint", {"model_dir": model_dir}), ("saved", {"saved_model_dir": export_dir})):
        detect_fn, class_names, _ = detect_ssd.make_detect_fn(**kwargs)
        assert class_names == CLASS_NAMES
        output_dir = tmp_path / source
        records, skipped = detect_ssd.detect_files(paths, detect_fn, class_names, str(output_dir), 0.05)
        assert skipped == 2   # c.jpg (corrupt) and missing.jpg
        assert sorted(os.listdir(output_dir)) == ["a_detections.png", "b_detections.png", "detections.json"]
        assert json.loads((output_dir / "detections.json").read_text()) == records
        assert Image.open(output_dir / "b_detections.png").size == (90, 40)   # the original size
        results[source] = records

    assert [(r["file"], r["width"], r["height"]) for r in results["saved"]] == [
        (paths[0], 402, 282), (paths[1], 90, 40)]
    assert all(r["detections"] for r in results["saved"])
    for ours, theirs in zip(results["checkpoint"], results["saved"]):
        assert [d["class_id"] for d in ours["detections"]] == [d["class_id"] for d in theirs["detections"]]
        np.testing.assert_allclose([d["box"] + [d["score"]] for d in ours["detections"]],
                                   [d["box"] + [d["score"]] for d in theirs["detections"]], atol=1e-5)


def test_script_names_skipped_files_and_exits_nonzero(model_and_export, image_dir, tmp_path):
    _, export_dir = model_and_export
    output_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "detect_ssd.py"), "--saved_model_dir", export_dir,
         "--input", f"{image_dir}/c.jpg,{image_dir}/b.png", "--output_dir", str(output_dir),
         "--output_format", "jpg"],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"skipping {image_dir}/c.jpg" in result.stderr
    assert "1 files skipped" in result.stderr
    assert sorted(os.listdir(output_dir)) == ["b_detections.jpg", "detections.json"]
