"""TFLite export (engine/tflite_export.py, export_tflite.py) and serving.load_detector: built-in ops
only, the SavedModel's signature names, float32 parity with the SavedModel on the sample's val images,
float16 close to it, int8 quantized and measured against float, the three detector kinds agreeing."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from dataset import fields, label_map, reader
from engine import checkpoints, serving, tflite_export
from metrics.evaluator import DetectionEvaluator
from test_export import CLASS_NAMES, write_random_model_dir

pytestmark = pytest.mark.slow  # every test builds SavedModel and TFLite exports (pytest.ini)

PARITY_TOLERANCE = 1e-4        # the bar for float32 TFLite against the SavedModel
NUM_VAL_IMAGES = 6
NUM_CALIBRATION_RECORDS = 8
TOP_SCORES = 100              # float16 vs float32: sorted scores compared down to this rank


@pytest.fixture(scope="module")
def exports(tmp_path_factory, sample_records):
    """A random tiny model as a model_dir, its SavedModel and its three TFLite files."""
    root = tmp_path_factory.mktemp("tflite")
    model_dir = root / "model_dir"
    config = write_random_model_dir(model_dir, seed=2)
    module, _, _, _ = serving.from_checkpoint(str(model_dir))
    saved_dir = serving.export(module, config, CLASS_NAMES, str(root / "saved"))
    calibration = tflite_export.calibration_images(sample_records, "train", NUM_CALIBRATION_RECORDS)
    paths = tflite_export.export(module.model, module._anchors.numpy(), config, CLASS_NAMES,
                                 str(root / "tflite"), calibration=calibration)
    return {"model_dir": str(model_dir), "saved_model": saved_dir, "tflite": paths, "config": config}


@pytest.fixture(scope="module")
def val_images(sample_records):
    return [(example[fields.IMAGE_ID].numpy().decode(), example[fields.IMAGE].numpy())
            for example in reader.read_split(sample_records, "val").take(NUM_VAL_IMAGES)]


@pytest.fixture(scope="module")
def detectors(exports):
    loaded = {fmt: serving.load_detector(path) for fmt, path in exports["tflite"].items()}
    loaded["saved_model"] = serving.load_detector(exports["saved_model"])
    return loaded


def _op_names(detector):
    return {op["op_name"] for op in detector._detect_one.interpreter._get_ops_details()}


def test_files_signature_and_builtin_ops_only(exports, detectors):
    folder = os.path.dirname(exports["tflite"]["float32"])
    assert sorted(os.listdir(folder)) == sorted(
        [checkpoints.CONFIG_FILENAME, label_map.LABEL_MAP_FILENAME] +
        [tflite_export.tflite_filename(f) for f in tflite_export.FORMATS])
    assert label_map.read_label_map(os.path.join(folder, label_map.LABEL_MAP_FILENAME)) == CLASS_NAMES
    for fmt in tflite_export.FORMATS:
        detector = detectors[fmt]
        assert detector.kind == "tflite" and detector.class_names == CLASS_NAMES
        signature = detector._detect_one.interpreter.get_signature_list()
        assert signature == {"serving_default": {
            "inputs": ["input_tensor"], "outputs": sorted(tflite_export.OUTPUT_KEYS)}}
        ops = _op_names(detector)
        # Post-processing inside: NMS, top-k and softmax are in the file; nothing custom or Flex.
        assert {"NON_MAX_SUPPRESSION_V5", "TOPK_V2", "SOFTMAX", "RESIZE_BILINEAR", "CONV_2D"} <= ops, fmt
        assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], fmt
    sizes = {fmt: os.path.getsize(path) for fmt, path in exports["tflite"].items()}
    assert 0.45 < sizes["float16"] / sizes["float32"] < 0.6     # float16 weights: half the bytes
    assert sizes["int8"] / sizes["float32"] < 0.35              # int8 weights: about a quarter


def assert_same_detections(ours, reference, tolerance):
    """Every valid row of `reference` has its own row in `ours` with the same class and box and score
    within `tolerance`, and the counts are equal. Rows are matched rather than compared by position:
    two detections whose scores differ by less than float32 rounding (< 1e-6; the random test model
    has many) may come out in either order. Returns the number of rows equal by position too."""
    n = int(reference[fields.NUM_DETECTIONS])
    assert int(ours[fields.NUM_DETECTIONS]) == n
    same = ((ours[fields.DETECTION_CLASSES][:n, None] == reference[fields.DETECTION_CLASSES][None, :n]) &
            (np.abs(ours[fields.DETECTION_SCORES][:n, None] - reference[fields.DETECTION_SCORES][None, :n])
             <= tolerance) &
            (np.abs(ours[fields.DETECTION_BOXES][:n, None] - reference[fields.DETECTION_BOXES][None, :n]).max(-1)
             <= tolerance))                                                          # [n ours, n reference]
    used = np.zeros(n, bool)
    for j in range(n):
        candidates = np.nonzero(same[:, j] & ~used)[0]
        assert candidates.size, f"reference row {j} ({reference[fields.DETECTION_SCORES][j]:.6f}) unmatched"
        used[candidates[0]] = True
    # Padding rows are zeros in both.
    for key in (fields.DETECTION_BOXES, fields.DETECTION_SCORES, fields.DETECTION_CLASSES):
        assert not ours[key][n:].any() and not reference[key][n:].any(), key
    return int(np.diagonal(same).sum())


def test_float32_equals_the_saved_model_on_the_sample_val_images(detectors, val_images):
    compared = in_place = 0
    for image_id, image in val_images:
        reference = detectors["saved_model"](image)
        in_place += assert_same_detections(detectors["float32"](image), reference, PARITY_TOLERANCE)
        compared += int(reference[fields.NUM_DETECTIONS])
    assert compared > 100 * len(val_images)   # many detections per image were compared, not padding
    assert in_place >= 0.98 * compared        # swaps of near-equal scores are rare


def test_float16_is_close_to_float32(detectors, val_images):
    """Weights rounded to float16 (relative error <= 2^-11) move scores by ~1e-3 (measured up to
    1.4e-3 here), enough to reorder this random model's near-equal scores and change which of two
    overlapping near-equal boxes NMS keeps; so the sorted scores are compared, and the detections
    through their agreement mAP (measured 0.94)."""
    # The top TOP_SCORES sorted scores agree even where rows swap. Further down the list (ranks 107-182
    # in full-suite runs) NMS among near-equal overlapping boxes can keep another box whose score is
    # up to 0.025 away, so the tail is left to the agreement mAP below.
    for image_id, image in val_images[:4]:
        half, full = detectors["float16"](image), detectors["float32"](image)
        np.testing.assert_allclose(half[fields.DETECTION_SCORES][:TOP_SCORES],
                                   full[fields.DETECTION_SCORES][:TOP_SCORES], atol=1e-2, err_msg=image_id)
    assert _agreement_map(detectors["float16"], detectors["float32"], val_images, 0.3) > 0.85


def _agreement_map(test, reference, images, min_reference_score):
    """VOC07 mAP of `test`'s detections scored against `reference`'s detections >= min_reference_score
    taken as ground truth (a float model scored against itself this way gets 1.0)."""
    evaluator = DetectionEvaluator(CLASS_NAMES)
    for image_id, image in images:
        ref, out = reference(image), test(image)
        keep = ref[fields.DETECTION_SCORES] >= min_reference_score
        n = int(out[fields.NUM_DETECTIONS])
        evaluator.add(image_id, image.shape[0], image.shape[1], ref[fields.DETECTION_BOXES][keep],
                      ref[fields.DETECTION_CLASSES][keep].astype(np.int64), np.zeros(keep.sum(), bool),
                      out[fields.DETECTION_BOXES][:n], out[fields.DETECTION_SCORES][:n],
                      out[fields.DETECTION_CLASSES][:n].astype(np.int64))
    return evaluator.evaluate(["voc07"])["voc07"]["mAP"]


def test_int8_is_quantized_and_agrees_with_float(detectors, val_images):
    interpreter = detectors["int8"]._detect_one.interpreter
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    convs = [op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
    assert convs and all(tensors[op["inputs"][1]]["dtype"] == np.int8 for op in convs)   # int8 kernels
    assert all(tensors[op["inputs"][0]]["dtype"] == np.int8 for op in convs)             # int8 activations
    images = val_images
    assert _agreement_map(detectors["float32"], detectors["float32"], images, 0.3) == pytest.approx(1.0)
    # Measured 0.89 on this random model (float16: 0.94; the scores of its untrained head lie within
    # a few hundredths of each other, so small changes reorder many); a trained model's int8 mAP cost
    # on the sample is in the README.
    assert _agreement_map(detectors["int8"], detectors["float32"], images, 0.3) > 0.75


def test_load_detector_kinds_agree_and_reject_bad_input(exports, detectors, val_images):
    _, image = val_images[0]
    checkpoint = serving.load_detector(exports["model_dir"])
    assert checkpoint.kind == "checkpoint" and checkpoint.path.endswith("ckpt-1")
    reference = detectors["saved_model"](image)
    assert reference[fields.DETECTION_BOXES].shape == (exports["config"].max_detections, 4)
    for other in (checkpoint, detectors["float32"]):
        assert_same_detections(other(image), reference, PARITY_TOLERANCE)
    batch = detectors["float32"](np.stack([image, image[:, ::-1]]))
    assert batch[fields.DETECTION_SCORES].shape == (2, exports["config"].max_detections)
    assert_same_detections({k: v[0] for k, v in batch.items()}, reference, PARITY_TOLERANCE)
    assert detectors["float32"].class_name(2) == "dog"
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        detectors["float32"](image.astype(np.float32))
    with pytest.raises(ValueError, match="got uint8 \\[4, 4\\]"):
        detectors["saved_model"](np.zeros([4, 4], np.uint8))
    with pytest.raises(FileNotFoundError, match="not a .tflite file, a SavedModel folder"):
        serving.load_detector(os.path.join(exports["model_dir"], "nothing_here"))


def test_export_tflite_script(exports, sample_records, tmp_path):
    output_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "export_tflite.py"), "--model_dir", exports["model_dir"],
         "--output_dir", str(output_dir), "--formats", "float16", "--data_dir", sample_records],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p for p in os.listdir(output_dir) if p.endswith(".tflite")) == ["model_float16.tflite"]
    assert serving.load_detector(output_dir / "model_float16.tflite").class_names == CLASS_NAMES
    bad = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "export_tflite.py"), "--model_dir", exports["model_dir"],
         "--output_dir", str(tmp_path / "bad"), "--formats", "int8", "--data_dir", str(tmp_path / "none")],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("export_tflite.py: error: no train shards")
    assert "Traceback" not in bad.stderr
