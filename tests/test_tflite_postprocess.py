"""engine/tflite_export.postprocess_batch1 run as a TFLite file (LiteRT) and as ONNX (tf2onnx, as
engine/onnx_export.py converts the same graph) against model/postprocess.py, on hand-built candidates:
boxes clipped flat onto the image edge (zero area) and exact score ties. tests/test_ssdlite_deploy.py
found TFLite repeating a flat box in place of other detections; docs/deployment.md has the story."""

import numpy as np
import pytest
import tensorflow as tf

from dataset import fields
from engine import onnx_export, tflite_export
from model import postprocess, presets

pytestmark = pytest.mark.slow  # converts TFLite and ONNX files (pytest.ini)

# SSDLite's post-processing (score > 0.001, NMS IoU > 0.55, boxes clipped before NMS) on 2 classes,
# 4 candidates per class, 8 rows.
CONFIG = presets.get("ssdlite320_mobilenet_v3_large", 2, max_detections_per_class=4, max_detections=8)
# Zero box codes decode to the anchors themselves (exact in float32 for these values).
ANCHORS = np.array([
    [0.5, 1.25, 0.75, 1.75],   # a0: right of the image; clipped to [0.5, 1, 0.75, 1]: zero width
    [0.5, 1.5, 0.75, 2.0],     # a1: another anchor clipped to the same flat box
    [0.0, 0.0, 0.5, 0.5],      # a2
    [0.0, 0.0, 0.5, 0.375],    # a3: IoU with a2 = 0.1875 / 0.25 = 0.75 > 0.55
    [0.5, 0.0, 1.0, 0.5],      # a4: touches a2 (IoU 0)
    [0.5, 0.0, 1.0, 0.625],    # a5: IoU with a4 = 0.25 / 0.3125 = 0.8 > 0.55
], np.float32)
FLAT, A2, A4, A5 = [0.5, 1.0, 0.75, 1.0], [0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.5, 0.0, 1.0, 0.625]
# Softmax probabilities [background, class 1, class 2]; logits = log(p) give them back (to 1e-7).
FLAT_FIRST = np.array([
    [0.06, 0.90, 0.04],   # class 1: the best box is flat: kept, and once
    [0.17, 0.80, 0.03],   # class 1: the same flat box from a1: kept too (flat boxes suppress nothing)
    [0.28, 0.70, 0.02],   # class 1: kept
    [0.39, 0.60, 0.01],   # class 1: suppressed by a2; class 2: not among the top 4
    [0.48, 0.02, 0.50],   # class 2: kept (then a0, a1: flat, kept)
    [0.59, 0.01, 0.40],   # class 2: suppressed by a4
], np.float32)
# (class, box, score) rows, by descending score.
FLAT_FIRST_ROWS = [(1, FLAT, 0.90), (1, FLAT, 0.80), (1, A2, 0.70), (2, A4, 0.50), (2, FLAT, 0.04),
                   (2, FLAT, 0.03)]
# Exact ties: a2, a4 and a5 have one probability row, so one score per class, and each row has
# equal class scores; a3 (0.05, suppressed by a2) is each class's 4th candidate. Flat a0, a1 are under
# the 0.001 threshold.
TIED = np.array([[0.9996, 0.0002, 0.0002]] * 2 + [[0.4, 0.3, 0.3], [0.9, 0.05, 0.05]]
                + [[0.4, 0.3, 0.3]] * 2, np.float32)
# The rule: NMS takes equal scores by anchor index (a4 before a5, so a4 suppresses a5), and equal
# scores come out by class, then anchor index.
TIED_ROWS = [(1, A2, 0.3), (1, A4, 0.3), (2, A2, 0.3), (2, A4, 0.3)]
SPECS = [tf.TensorSpec([1, len(ANCHORS), 3], tf.float32, name="cls_logits"),
         tf.TensorSpec([1, len(ANCHORS), 4], tf.float32, name="box_codes")]


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    """{name: fn(probabilities [A, 3]) -> numpy outputs [K, ...]} for TFLite, ONNX and the checkpoint's
    model/postprocess.py."""
    folder = tmp_path_factory.mktemp("tflite_postprocess")

    @tf.function(input_signature=SPECS)
    def batch1(cls_logits, box_codes):
        return tflite_export.postprocess_batch1(cls_logits, box_codes, tf.constant(ANCHORS), CONFIG)

    module = tf.Module()
    module.batch1 = batch1
    path = folder / "postprocess.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([batch1.get_concrete_function()], module).convert())
    tflite = tflite_export.make_interpreter(str(path)).get_signature_runner()
    import tf2onnx
    proto, _ = tf2onnx.convert.from_function(batch1, input_signature=SPECS, opset=onnx_export.OPSET)
    (folder / "postprocess.onnx").write_bytes(proto.SerializeToString())
    session = onnx_export.make_session(str(folder / "postprocess.onnx"))
    names = [output.name for output in session.get_outputs()]

    def inputs(probabilities):
        return np.log(probabilities)[None], np.zeros((1, len(ANCHORS), 4), np.float32)

    def run_tflite(probabilities):
        cls_logits, box_codes = inputs(probabilities)
        return {key: value[0] for key, value in tflite(cls_logits=cls_logits, box_codes=box_codes).items()}

    def run_onnx(probabilities):
        cls_logits, box_codes = inputs(probabilities)
        values = session.run(names, {"cls_logits": cls_logits, "box_codes": box_codes})
        return {key: value[0] for key, value in zip(names, values)}

    def run_checkpoint(probabilities):
        return {key: value.numpy()[0] for key, value in postprocess.postprocess(*inputs(probabilities), ANCHORS, CONFIG).items()}

    return {"tflite": run_tflite, "onnx": run_onnx, "checkpoint": run_checkpoint}


def _rows(outputs):
    count = int(outputs[fields.NUM_DETECTIONS])
    assert not outputs[fields.DETECTION_SCORES][count:].any()    # zero padding
    return [(int(outputs[fields.DETECTION_CLASSES][j]), outputs[fields.DETECTION_BOXES][j].tolist(),
             float(outputs[fields.DETECTION_SCORES][j])) for j in range(count)]


def _assert_rows(found, expected, name):
    assert [(c, b) for c, b, _ in found] == [(c, b) for c, b, _ in expected], name
    np.testing.assert_allclose([s for _, _, s in found], [s for _, _, s in expected], atol=1e-6, err_msg=name)


def test_flat_boxes_are_kept_once_each_as_the_checkpoint_keeps_them(runtimes):
    for name in ("checkpoint", "tflite", "onnx"):
        _assert_rows(_rows(runtimes[name](FLAT_FIRST)), FLAT_FIRST_ROWS, name)


def test_exact_ties_follow_one_rule_in_the_deployed_graph(runtimes):
    for name in ("tflite", "onnx"):
        rows = _rows(runtimes[name](TIED))
        _assert_rows(rows, TIED_ROWS, name)
        assert len({score for _, _, score in rows}) == 1, name   # the four scores are one float
    # The checkpoint's combined_non_max_suppression has no such rule: its queue compares scores only.
    # Its heap (std::priority_queue, libstdc++) holds the candidates [a2, a4, a5, a3] as top-k ordered
    # them; popping a2 moves a3 to the root and sifts it down past the right child a5 (equal children
    # go right), so a5 comes out before a4 and suppresses it. Measured with TF 2.21.
    _assert_rows(_rows(runtimes["checkpoint"](TIED)), [(1, A2, 0.3), (1, A5, 0.3), (2, A2, 0.3), (2, A5, 0.3)],
                 "checkpoint")


def test_tflite_nms_kernel_selects_a_flat_box_again_and_again(tmp_path):
    """The cause, on the bare op: NON_MAX_SUPPRESSION_V5 over a flat box (score 0.9) and a normal one
    (0.8). TF's kernel (and ONNX Runtime's) selects [0, 1]; TFLite's pushes each selected box back onto
    its queue and relies on IoU(box, itself) = 1 to drop it, which is 0 for a flat box: [0, 0]. When
    this fails, LiteRT has fixed its kernel and postprocess_batch1's flat-box guard may go."""
    boxes, scores = np.array([FLAT, A2], np.float32), np.array([0.9, 0.8], np.float32)

    @tf.function(input_signature=[tf.TensorSpec([2, 4], tf.float32), tf.TensorSpec([2], tf.float32)])
    def nms(boxes, scores):
        selected, _, count = tf.raw_ops.NonMaxSuppressionV5(
            boxes=boxes, scores=scores, max_output_size=2, iou_threshold=0.55, score_threshold=0.001,
            soft_nms_sigma=0.0, pad_to_max_output_size=True)
        return {"selected": selected, "count": count}

    assert nms(boxes, scores)["selected"].numpy().tolist() == [0, 1]
    module = tf.Module()
    module.nms = nms
    path = tmp_path / "nms.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([nms.get_concrete_function()], module).convert())
    outputs = tflite_export.make_interpreter(str(path)).get_signature_runner()(boxes=boxes, scores=scores)
    assert outputs["selected"].tolist() == [0, 0] and int(outputs["count"]) == 2
