"""The ssdlite320_mobilenet_v3_large preset through the deploy paths (issues 23 and 25): a random
narrow model as a model_dir, exported to TFLite float32 and int8 (fixed input, with metadata) and to ONNX
float32, every file opened through the detector door (engine.serving.load_detector) and compared with
the checkpoint's detections on the sample's val images. The int8 file must run in LiteRT with its
XNNPACK delegate (the MobileNetV3 blocks quantized whole: engine/tflite_export.py keeps only the
normalization layer, hard-swish and the post-processing in float)."""

import collections

import numpy as np
import pytest

from dataset import fields, reader
from engine import onnx_export, serving, tflite_export, tflite_metadata
from model import box_ops
from test_export import CLASS_NAMES, write_random_model_dir

pytestmark = pytest.mark.slow  # builds TFLite and ONNX exports (pytest.ini)

PRESET = "ssdlite320_mobilenet_v3_large"
WIDTH = 0.25
PARITY_TOLERANCE = 1e-4
NUM_VAL_IMAGES = 4
INT8_TOP = 10
NUM_AGREEMENT_IMAGES = 16       # int8 against float32: a share, so more images than the row-by-row parity
NUM_CALIBRATION_RECORDS = 4


@pytest.fixture(scope="module")
def exports(tmp_path_factory, sample_records):
    root = tmp_path_factory.mktemp("ssdlite_deploy")
    config = write_random_model_dir(root / "model_dir", seed=3, preset=PRESET, width=WIDTH)
    module, _, _, _ = serving.from_checkpoint(str(root / "model_dir"))
    calibration = tflite_export.calibration_images(sample_records, "train", NUM_CALIBRATION_RECORDS)
    return {"config": config, "model_dir": str(root / "model_dir"),
            "tflite": tflite_export.export(module, CLASS_NAMES, str(root / "tflite"), ["float32", "int8"],
                                           calibration=calibration),
            "onnx": onnx_export.export(module, CLASS_NAMES, str(root / "onnx"), ["float32"])}


def _resized_val_images(sample_records, size, count):
    return [(example[fields.IMAGE_ID].numpy().decode(), tflite_export.resize_uint8(example[fields.IMAGE].numpy(), size))
            for example in reader.read_split(sample_records, "val").take(count)]


@pytest.fixture(scope="module")
def val_images(sample_records, exports):
    """The first val images resized to S x S (the door's resize_uint8), where every runtime sees the same
    pixels as the checkpoint."""
    return _resized_val_images(sample_records, exports["config"].image_size, NUM_VAL_IMAGES)


@pytest.fixture(scope="module")
def detectors(exports):
    loaded = {f"tflite_{fmt}": serving.load_detector(path) for fmt, path in exports["tflite"].items()}
    loaded["onnx_float32"] = serving.load_detector(exports["onnx"]["float32"])
    loaded["checkpoint"] = serving.load_detector(exports["model_dir"])
    return loaded


def test_float_files_equal_the_checkpoint(exports, detectors, val_images):
    """Every row (300 per image): scores by position within PARITY_TOLERANCE, and each checkpoint row
    matched by a row of ours of its own (same class, box and score within PARITY_TOLERANCE), so no row
    is missing or repeated. Rows may trade places only with rows whose scores are within the tolerance
    of theirs: this random model's scores crowd near 1, where TFLite's softmax and TF's differ in the
    last bit and the checkpoint's combined NMS orders exact ties by its own heap (docs/deployment.md).
    Image 000307 (the first) holds the flat box at the right edge that TFLite's NMS kernel used to
    repeat (tests/test_tflite_postprocess.py)."""
    assert exports["config"].name == PRESET
    for image_id, image in val_images:
        reference = detectors["checkpoint"](image)
        assert len(reference) == exports["config"].max_detections, image_id
        for kind in ("tflite_float32", "onnx_float32"):
            ours = detectors[kind](image)
            assert len(ours) == len(reference), (kind, image_id)
            np.testing.assert_allclose(ours.scores, reference.scores, atol=PARITY_TOLERANCE, err_msg=f"{kind} {image_id}")
            free = np.ones(len(ours), bool)
            for j in range(len(reference)):
                same = (free & (ours.classes == reference.classes[j])
                        & (np.abs(ours.scores - reference.scores[j]) <= PARITY_TOLERANCE)
                        & (np.abs(ours.boxes - reference.boxes[j]).max(-1) <= PARITY_TOLERANCE))
                assert same.any(), (kind, image_id, j)
                free[np.argmax(same)] = False


def test_fixed_files_carry_metadata_and_the_preset_s_input(exports, detectors):
    for fmt, path in exports["tflite"].items():
        with open(path, "rb") as f:
            metadata, files = tflite_metadata.read(f.read())
        assert metadata and files == {"labelmap.txt": b"???\ncat\ndog\nperson\n"}, fmt
        details = detectors[f"tflite_{fmt}"].runtime.interpreter.get_input_details()[0]
        assert list(details["shape"]) == [1, 320, 320, 3] and details["dtype"] == np.uint8, fmt


def test_int8_runs_quantized_in_litert_and_agrees_with_float32(detectors, val_images, exports, sample_records):
    interpreter = detectors["tflite_int8"].runtime.interpreter
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    dtypes = collections.defaultdict(set)
    for op in ops:
        if len(op["outputs"]):
            dtypes[op["op_name"]].add(tensors[op["outputs"][0]]["dtype"])
    # The MobileNetV3 blocks stay int8 end to end: convolutions, squeeze-excitation (MEAN, MUL) and
    # residual adds; hard-swish (no int8 kernel in XNNPACK) and the post-processing stay float32.
    for name in ("CONV_2D", "DEPTHWISE_CONV_2D", "MEAN"):
        assert dtypes[name] == {np.int8}, name
    assert np.int8 in dtypes["MUL"] and np.int8 in dtypes["ADD"]
    for name in ("HARD_SWISH", "SOFTMAX", "TOPK_V2", "UNPACK", "EXP"):
        assert dtypes[name] == {np.float32}, name
    # Quantized: the normalized input and each hard-swish's output; dequantized: each hard-swish's input
    # and the heads' outputs (one per head map).
    hard_swish = sum(op["op_name"] == "HARD_SWISH" for op in ops)
    assert sum(op["op_name"] == "QUANTIZE" for op in ops) == 1 + hard_swish
    assert sum(op["op_name"] == "DEQUANTIZE" for op in ops) == 12 + hard_swish
    # XNNPACK takes the int8 network whole, as the float32 one: as many delegate partitions (an int8
    # hard-swish cut it into 20 more, engine/tflite_export.INT8_FLOAT_OPS). LiteRT delegates at the
    # first call.
    partitions = {}
    for fmt in ("float32", "int8"):
        detectors[f"tflite_{fmt}"](val_images[0][1])
        partitions[fmt] = sum(op["op_name"] == "DELEGATE"
                              for op in detectors[f"tflite_{fmt}"].runtime.interpreter._get_ops_details())
    assert partitions["int8"] == partitions["float32"] > 0, partitions
    # Detections against float32: of the float file's top INT8_TOP rows, the share the int8 file also
    # finds (same class, IoU >= 0.5), over NUM_AGREEMENT_IMAGES val images. This random narrow net
    # amplifies rounding (its int8 head outputs correlate about 0.8 with float32's), so the bar is a
    # smoke bar, far below a trained model's agreement; the int8 mAP cost of a trained SSDLite is
    # measured in docs/deployment.md.
    found = []
    for image_id, image in _resized_val_images(sample_records, exports["config"].image_size, NUM_AGREEMENT_IMAGES):
        reference, ours = detectors["tflite_float32"](image), detectors["tflite_int8"](image)
        assert len(ours) == len(reference) and np.all(np.diff(ours.scores) <= 0), image_id
        overlap = box_ops.iou(reference.boxes[:INT8_TOP], ours.boxes).numpy()
        same_class = reference.classes[:INT8_TOP, None] == ours.classes[None, :]
        found.append(((overlap >= 0.5) & same_class).any(axis=1).mean())
    # Measured 0.631 (0.3-1.0 per image) with the merged exporter (hard-swish in float, flat-box NMS).
    print("int8 agreement per image:", [round(float(f), 2) for f in found], "mean", round(float(np.mean(found)), 3))
    assert np.mean(found) >= 0.45, found
