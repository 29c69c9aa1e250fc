"""TFLite export (engine/tflite_export.py, export_tflite.py) and the detector door serving.load_detector:
built-in ops only, the SavedModel's signature names, the fixed [1, S, S, 3] default and the
--dynamic_input file, float32 parity with the SavedModel on the sample's val images, float16 close to
it, int8 quantized and measured against float, the detector kinds agreeing and each trimming its padded
outputs to the same contract, MediaPipe's ObjectDetector running the files with their metadata, and no
interpreter path that gives the known-wrong answer."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT
from dataset import fields, label_map, reader
from engine import checkpoints, serving, tflite_export, tflite_metadata
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
    saved_dir = serving.export(module, CLASS_NAMES, str(root / "saved"))
    calibration = tflite_export.calibration_images(sample_records, "train", NUM_CALIBRATION_RECORDS)
    paths = tflite_export.export(module, CLASS_NAMES, str(root / "tflite"), calibration=calibration)
    dynamic = tflite_export.export(module, CLASS_NAMES, str(root / "dynamic"), ["float32"], dynamic_input=True)
    return {"model_dir": str(model_dir), "saved_model": saved_dir, "tflite": paths, "config": config,
            "dynamic": dynamic["float32"]}


@pytest.fixture(scope="module")
def val_images(sample_records):
    return [(example[fields.IMAGE_ID].numpy().decode(), example[fields.IMAGE].numpy())
            for example in reader.read_split(sample_records, "val").take(NUM_VAL_IMAGES)]


@pytest.fixture(scope="module")
def detectors(exports):
    loaded = {fmt: serving.load_detector(path) for fmt, path in exports["tflite"].items()}
    loaded["saved_model"] = serving.load_detector(exports["saved_model"])
    loaded["dynamic"] = serving.load_detector(exports["dynamic"])
    return loaded


def _op_names(detector):
    return {op["op_name"] for op in detector.runtime.interpreter._get_ops_details()}


def test_files_signature_and_builtin_ops_only(exports, detectors):
    folder = os.path.dirname(exports["tflite"]["float32"])
    assert sorted(os.listdir(folder)) == sorted(
        [checkpoints.CONFIG_FILENAME, label_map.LABEL_MAP_FILENAME] +
        [tflite_export.tflite_filename(f) for f in tflite_export.FORMATS])
    assert label_map.read_label_map(os.path.join(folder, label_map.LABEL_MAP_FILENAME)) == CLASS_NAMES
    for fmt in tflite_export.FORMATS:
        detector = detectors[fmt]
        assert detector.kind == "tflite" and detector.class_names == CLASS_NAMES
        signature = detector.runtime.interpreter.get_signature_list()
        assert signature == {"serving_default": {
            "inputs": ["input_tensor"], "outputs": sorted(tflite_export.OUTPUT_KEYS)}}
        ops = _op_names(detector)
        # Post-processing inside: NMS, top-k and softmax are in the file; nothing custom or Flex. The
        # input is the preset's S x S already: no resize op (bilinear to the same size is the identity).
        assert {"NON_MAX_SUPPRESSION_V5", "TOPK_V2", "SOFTMAX", "CONV_2D"} <= ops, fmt
        assert "RESIZE_BILINEAR" not in ops, fmt
        assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], fmt
        assert detector.runtime.input_size == exports["config"].image_size, fmt
        details = detector.runtime.interpreter.get_input_details()[0]
        assert list(details["shape_signature"]) == [1, 300, 300, 3] and details["dtype"] == np.uint8, fmt
    dynamic = detectors["dynamic"].runtime
    assert dynamic.input_size is None and "RESIZE_BILINEAR" in _op_names(detectors["dynamic"])
    assert list(dynamic.interpreter.get_input_details()[0]["shape_signature"]) == [1, -1, -1, 3]
    sizes = {fmt: os.path.getsize(path) for fmt, path in exports["tflite"].items()}
    assert 0.45 < sizes["float16"] / sizes["float32"] < 0.6     # float16 weights: half the bytes
    assert sizes["int8"] / sizes["float32"] < 0.35              # int8 weights: about a quarter


def assert_same_detections(ours, reference, tolerance):
    """Every row of `reference` (serving.Detections) has its own row in `ours` with the same class and
    box and score within `tolerance`, and the counts are equal. Rows are matched rather than compared
    by position: two detections whose scores differ by less than float32 rounding (< 1e-6; the random
    test model has many) may come out in either order. Returns the number of rows equal by position too."""
    n = len(reference)
    assert len(ours) == n
    same = ((ours.classes[:, None] == reference.classes[None, :]) &
            (np.abs(ours.scores[:, None] - reference.scores[None, :]) <= tolerance) &
            (np.abs(ours.boxes[:, None] - reference.boxes[None, :]).max(-1) <= tolerance))  # [n ours, n ref]
    used = np.zeros(n, bool)
    for j in range(n):
        candidates = np.nonzero(same[:, j] & ~used)[0]
        assert candidates.size, f"reference row {j} ({reference.scores[j]:.6f}) unmatched"
        used[candidates[0]] = True
    return int(np.diagonal(same).sum())


def _padded(detector, image):
    """The padded outputs (one image, numpy) of the runtime behind `detector`, before the door trims."""
    if detector.kind == "tflite":
        return detector.runtime(image)
    if detector.kind == "saved_model":
        outputs = detector.runtime.signatures[serving.SERVING_DEFAULT](input_tensor=tf.constant(image[None]))
    else:
        outputs = detector.runtime.serve_images(tf.constant(image[None]))
    return {key: value.numpy()[0] for key, value in outputs.items()}


def test_float32_equals_the_saved_model_on_the_sample_val_images(detectors, val_images, exports):
    """The any-size file on the images as they are; the fixed S x S file on the images resized to S x S
    beforehand (the door's resize_uint8), where the SavedModel sees the same pixels (its resize of an
    S x S image is the identity). On other sizes the door's uint8 rounding of the resized image makes
    the fixed file approximate (measured below)."""
    size = exports["config"].image_size
    compared = in_place = 0
    for image_id, image in val_images:
        reference = detectors["saved_model"](image)
        in_place += assert_same_detections(detectors["dynamic"](image), reference, PARITY_TOLERANCE)
        compared += len(reference)
        square = tflite_export.resize_uint8(image, size)
        assert square.shape == (size, size, 3) and square.dtype == np.uint8
        assert_same_detections(detectors["float32"](square), detectors["saved_model"](square), PARITY_TOLERANCE)
    assert compared > 100 * len(val_images)   # many detections per image were compared, not padding
    assert in_place >= 0.98 * compared        # swaps of near-equal scores are rare
    # Fixed file on the original sizes: the same top scores up to the uint8 rounding (measured 2.5e-3).
    for image_id, image in val_images[:2]:
        fixed, reference = detectors["float32"](image), detectors["saved_model"](image)
        np.testing.assert_allclose(fixed.scores[:20], reference.scores[:20], atol=1e-2, err_msg=image_id)


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
        assert min(len(half), len(full)) >= TOP_SCORES, image_id
        np.testing.assert_allclose(half.scores[:TOP_SCORES], full.scores[:TOP_SCORES], atol=1e-2, err_msg=image_id)
    assert _agreement_map(detectors["float16"], detectors["float32"], val_images, 0.3) > 0.85


def _agreement_map(test, reference, images, min_reference_score):
    """VOC07 mAP of `test`'s detections scored against `reference`'s detections >= min_reference_score
    taken as ground truth (a float model scored against itself this way gets 1.0)."""
    evaluator = DetectionEvaluator(CLASS_NAMES)
    for image_id, image in images:
        ref, out = reference(image).select(min_reference_score), test(image)
        evaluator.add(image_id, image.shape[0], image.shape[1], ref.boxes, ref.classes.astype(np.int64),
                      np.zeros(len(ref), bool), out.boxes, out.scores, out.classes.astype(np.int64))
    return evaluator.evaluate(["voc07"])["voc07"]["mAP"]


def test_int8_is_quantized_and_agrees_with_float(detectors, val_images):
    interpreter = detectors["int8"].runtime.interpreter
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
    prefix = serving.load_detector(checkpoint.path)       # a ckpt-N prefix opens the same checkpoint
    assert (prefix.kind, prefix.path) == ("checkpoint", checkpoint.path)
    reference = detectors["saved_model"](image)
    assert isinstance(reference, serving.Detections) and len(reference) > 0
    for other in (checkpoint, prefix, detectors["dynamic"]):
        assert_same_detections(other(image), reference, PARITY_TOLERANCE)
    for detector in (checkpoint, detectors["saved_model"], detectors["dynamic"]):
        batch = detector(np.stack([image, image[:, ::-1]]))       # one record per image, in order
        assert isinstance(batch, list) and len(batch) == 2
        assert_same_detections(batch[0], reference, PARITY_TOLERANCE)
        assert_same_detections(batch[1], detector(np.ascontiguousarray(image[:, ::-1])), PARITY_TOLERANCE)
    assert detectors["float32"].class_name(2) == "dog"
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        detectors["float32"](image.astype(np.float32))
    with pytest.raises(ValueError, match="got uint8 \\[4, 4\\]"):
        detectors["saved_model"](np.zeros([4, 4], np.uint8))
    with pytest.raises(ValueError, match="got uint8 \\[1, 0, 8, 3\\]"):
        checkpoint(np.zeros([1, 0, 8, 3], np.uint8))
    with pytest.raises(FileNotFoundError, match="not a .tflite file, a .onnx file, a SavedModel folder"):
        serving.load_detector(os.path.join(exports["model_dir"], "nothing_here"))


def test_every_kind_trims_its_padded_outputs_to_the_contract(exports, detectors, val_images):
    """The door's rows are the first num_detections rows of the kind's own padded outputs, unchanged,
    with int32 classes; the padding beyond them is zeros; scores descend and pass the threshold."""
    config = exports["config"]
    kinds = {"checkpoint": serving.load_detector(exports["model_dir"]), "saved_model": detectors["saved_model"],
             "tflite": detectors["float32"]}
    for _, image in val_images[:2]:
        for kind, detector in kinds.items():
            padded, trimmed = _padded(detector, image), detector(image)
            n = int(padded[fields.NUM_DETECTIONS])
            assert 0 < n == len(trimmed) <= config.max_detections, kind
            assert (trimmed.boxes.dtype, trimmed.scores.dtype, trimmed.classes.dtype) == (
                np.float32, np.float32, np.int32), kind
            assert trimmed.boxes.shape == (n, 4) and trimmed.scores.shape == trimmed.classes.shape == (n,)
            np.testing.assert_array_equal(trimmed.boxes, padded[fields.DETECTION_BOXES][:n])
            np.testing.assert_array_equal(trimmed.scores, padded[fields.DETECTION_SCORES][:n])
            np.testing.assert_array_equal(trimmed.classes, padded[fields.DETECTION_CLASSES][:n])
            for key in (fields.DETECTION_BOXES, fields.DETECTION_SCORES, fields.DETECTION_CLASSES):
                assert not padded[key][n:].any(), (kind, key)
            assert (np.diff(trimmed.scores) <= 0).all() and (trimmed.scores > config.score_threshold).all()
            assert set(trimmed.classes) <= {1, 2, 3}, kind


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


def _mediapipe_rows(detector, image):
    """MediaPipe's detections of uint8 [H, W, 3] `image` as (class names, [N, 4] boxes, scores): boxes as
    MediaPipe gives them, integer pixels [origin_x, origin_y, width, height]."""
    import mediapipe

    result = detector.detect(mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
    boxes = [[d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width, d.bounding_box.height]
             for d in result.detections]
    return ([d.categories[0].category_name for d in result.detections], np.array(boxes, np.float64).reshape(-1, 4),
            np.array([d.categories[0].score for d in result.detections], np.float64))


def _matched_fraction(mediapipe_rows, reference, class_names, height, width, box_px, score_tolerance):
    """The fraction of MediaPipe's rows that have their own row of `reference` (serving.Detections) with the
    same class, a box within `box_px` pixels in MediaPipe's form and a score within `score_tolerance`.
    MediaPipe truncates each of origin, width and height to integers, so each is compared on its own."""
    names, boxes, scores = mediapipe_rows
    assert len(names) == len(reference)
    y0, x0, y1, x1 = reference.boxes.T.astype(np.float64)
    pixels = np.stack([x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height], -1)   # [N, 4]
    same = ((np.array(names)[:, None] == np.array([class_names[c - 1] for c in reference.classes])[None]) &
            (np.abs(boxes[:, None] - pixels[None]).max(-1) <= box_px) &
            (np.abs(scores[:, None] - reference.scores[None]) <= score_tolerance))
    used = np.zeros(len(reference), bool)
    for i in range(len(names)):
        candidates = np.nonzero(same[i] & ~used)[0]
        if candidates.size:
            used[candidates[0]] = True
    return used.mean()


def test_mediapipe_object_detector_runs_the_files_as_the_saved_model(exports, detectors, val_images):
    """MediaPipe Tasks' ObjectDetector opens each fixed-input file by its metadata alone (output names,
    box order, label file with the background line) and finds the SavedModel's detections.

    On images already S x S MediaPipe's resize does nothing: every detection matches (same class, box
    within 1 px in MediaPipe's integer [x, y, width, height], score within 1e-5; measured 15,999 of
    16,000 rows on the 80 val images, scores within 8.3e-7). On the original sizes MediaPipe resizes
    with its own resampler: this random model's top score moved by up to 0.011 (80 val images), and
    its crowded scores reorder, so the top scores and the agreement are compared there."""
    from mediapipe.tasks.python import BaseOptions, vision

    size = exports["config"].image_size
    saved_model = detectors["saved_model"]
    for fmt, path in exports["tflite"].items():
        options = vision.ObjectDetectorOptions(base_options=BaseOptions(model_asset_path=path))
        with vision.ObjectDetector.create_from_options(options) as detector:
            for image_id, image in val_images[:3]:
                square = tflite_export.resize_uint8(image, size)
                rows = _mediapipe_rows(detector, square)
                # float32 against the SavedModel; float16 and int8 against the same file in our door.
                reference = (saved_model if fmt == "float32" else detectors[fmt])(square)
                assert len(rows[0]) == len(reference) > 100, (fmt, image_id)
                assert _matched_fraction(rows, reference, CLASS_NAMES, size, size, 1.0 + 1e-4, 1e-5) >= 0.99, (
                    fmt, image_id)
            if fmt == "float32":
                for image_id, image in val_images:
                    names, _, scores = _mediapipe_rows(detector, image)
                    reference = saved_model(image)
                    np.testing.assert_allclose(scores[:20], reference.scores[:20], atol=0.02, err_msg=image_id)
                    assert _matched_fraction((names, _, scores), reference, CLASS_NAMES, image.shape[0],
                                             image.shape[1], 1.0 + 1e-4, 0.02) > 0.3, image_id


def test_mediapipe_refuses_the_dynamic_file_instead_of_running_it_at_1x1(exports):
    """The --dynamic_input file has no metadata, so MediaPipe stops with its message rather than
    running an any-size input at 1 x 1 (what it does with metadata added: every score equal)."""
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ObjectDetectorOptions(base_options=BaseOptions(model_asset_path=exports["dynamic"]))
    with pytest.raises(Exception, match="require TFLite Model Metadata"):
        vision.ObjectDetector.create_from_options(options)


def test_every_fixed_file_carries_metadata_named_by_signature(exports):
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    for fmt, path in list(exports["tflite"].items()) + [("dynamic", exports["dynamic"])]:
        with open(path, "rb") as f:
            content = f.read()
        metadata, files = tflite_metadata.read(content)
        if fmt == "dynamic":
            assert metadata is None and files == {}
            continue
        assert files == {"labelmap.txt": b"???\ncat\ndog\nperson\n"}, fmt
        subgraph = schema.ModelMetadata.GetRootAsModelMetadata(metadata, 0).SubgraphMetadata(0)
        names = [subgraph.OutputTensorMetadata(i).Name().decode() for i in range(subgraph.OutputTensorMetadataLength())]
        # Each name sits at the position of its signature output among the subgraph's outputs.
        interpreter = tflite_export.make_interpreter(path)
        position = {d["index"]: i for i, d in enumerate(interpreter.get_output_details())}
        by_signature = interpreter.get_signature_runner().get_output_details()   # signature key -> details
        assert {names[position[d["index"]]]: key for key, d in by_signature.items()} == {
            "location": "detection_boxes", "category": "detection_classes", "score": "detection_scores",
            "number of detections": "num_detections"}, fmt


def _stride4_conv_file(tmp_path):
    """A 3x3 convolution of stride 4 as a .tflite file and its Keras output on one random input."""
    inputs = tf.keras.Input([16, 16, 3], batch_size=1)
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(2, 3, strides=4, padding="same")(inputs))
    module = tf.Module()
    module.weights = [v if isinstance(v, tf.Variable) else v.value for v in model.variables]
    module.serve = tf.function(lambda x: {"y": model(x)}, input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    path = tmp_path / "stride4.tflite"
    path.write_bytes(converter.convert())
    image = np.random.default_rng(0).random([1, 16, 16, 3], np.float32)
    return str(path), image, model(image).numpy()


def _run_file(interpreter, image):
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_no_interpreter_path_gives_the_known_wrong_answer(tmp_path, monkeypatch, caplog):
    """TF 2.21's tf.lite.Interpreter with its default delegate returns zeros for a 3x3 stride-4
    convolution. make_interpreter gives LiteRT, or without it tf.lite with no default delegates and
    a warning: both right."""
    path, image, expected = _stride4_conv_file(tmp_path)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(_run_file(tflite_export.make_interpreter(path), image), expected, atol=1e-5)
    assert type(tflite_export.make_interpreter(path)).__module__.startswith("ai_edge_litert")
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)   # as if not installed
    with caplog.at_level("WARNING"):
        fallback = tflite_export.make_interpreter(path)
    assert isinstance(fallback, tf.lite.Interpreter) and "ai-edge-litert is not installed" in caplog.text
    np.testing.assert_allclose(_run_file(fallback, image), expected, atol=1e-5)
    # The path make_interpreter never takes, shown wrong (if a TF release fixes it, this line says so).
    assert not _run_file(tf.lite.Interpreter(model_path=path), image).any()
