"""ONNX export: the TFLite file's serving graph (engine/tflite_export.TFLiteGraph: resize + normalize +
network + per-class top-k + NON_MAX_SUPPRESSION_V5 post-processing, batch 1) converted by tf2onnx at
opset 17, for ONNX Runtime (CPU, CUDA, TensorRT execution providers), OpenCV >= 5.1 DNN and OpenVINO.

Why this graph and not the SavedModel's: tf2onnx (1.17) refuses tf.image.combined_non_max_suppression
with class-specific boxes, which model/postprocess.py (the SavedModel) uses; the TFLite graph does the
same steps with per-class top-k and NMS v5, which become ONNX TopK and NonMaxSuppression (opset 10+).
TF-TRT is gone since TF 2.18, so ONNX Runtime's TensorRT and CUDA providers are the route to TensorRT.

Graph contract (every format):
  input   input_tensor       uint8   [1, H, W, 3]  RGB, any H, W > 0 (batch 1)
  outputs detection_boxes    float32 [1, K, 4]     normalized yxyx of the original image, clipped
          detection_scores   float32 [1, K]        descending, 0 in padding
          detection_classes  float32 [1, K]        label-map ids 1..C, 0 in padding
          num_detections     float32 [1]
the SavedModel's names (by name, not position), dtypes and K. Formats:
  float32   the converted graph; detections equal the SavedModel's (tests/test_onnx.py, 1e-4)
  int8      ONNX Runtime static quantization (QDQ, per-channel int8 weights, uint8 activations,
            MinMax calibration on uint8 images) of the network's Conv and MaxPool only: the
            resize, the input normalization, the L2-norm, the decode, softmax, top-k and NMS stay
            float32, as the TFLite int8 file keeps them (engine/tflite_export.INT8_FLOAT_LAYERS).
"""

import os
import tempfile
import time

import numpy as np
from absl import logging

from dataset import atomic
from engine import checkpoints, tflite_export

OPSET = 17
FORMATS = ("float32", "int8")
INPUT_NAME = tflite_export.INPUT_NAME
OUTPUT_KEYS = tflite_export.OUTPUT_KEYS
INT8_OP_TYPES = ("Conv", "MaxPool")   # quantized; every other op stays float32 (module docstring)


def onnx_filename(fmt):
    return f"model_{fmt}.onnx"


def convert(model, anchors, config):
    """The float32 ONNX ModelProto of the serving graph (module docstring)."""
    import tensorflow as tf
    import tf2onnx

    graph = tflite_export.TFLiteGraph(model, anchors, config)
    spec = [tf.TensorSpec([1, None, None, 3], tf.uint8, name=INPUT_NAME)]
    proto, _ = tf2onnx.convert.from_function(graph.serve, input_signature=spec, opset=OPSET)
    if len(proto.graph.input) != 1:   # a tensor captured by the function and not frozen
        raise ValueError(f"converted graph has inputs {[i.name for i in proto.graph.input]}, expected {INPUT_NAME}")
    # tf2onnx keeps going past an op it cannot convert (leaving the TF op in the graph): refuse that.
    foreign = sorted({f"{node.domain}:{node.op_type}" for node in proto.graph.node
                      if node.domain not in ("", "ai.onnx")})
    if foreign:
        raise ValueError(f"tf2onnx left ops outside the ONNX standard: {', '.join(foreign)}")
    outputs = sorted(output.name for output in proto.graph.output)
    if outputs != sorted(OUTPUT_KEYS):
        raise ValueError(f"converted graph has outputs {outputs}, expected {sorted(OUTPUT_KEYS)}")
    return proto


class _CalibrationReader:
    """onnxruntime.quantization's CalibrationDataReader over uint8 [H, W, 3] images, with progress."""

    def __init__(self, images):
        self._images = iter(images)
        self._count = 0
        self._start = time.time()

    def get_next(self):
        image = next(self._images, None)
        if image is None:
            logging.info("int8 calibration: %d images in %.1f s", self._count, time.time() - self._start)
            return None
        self._count += 1
        logging.log_every_n_seconds(logging.INFO, "int8 calibration: %d images (%.1f images/s)", 10,
                                    self._count, self._count / max(time.time() - self._start, 1e-9))
        return {INPUT_NAME: np.asarray(image, np.uint8)[None]}


def quantize_int8(float_path, int8_path, calibration_images):
    """Writes the int8 file (module docstring) of the float32 file at `float_path` to `int8_path`,
    calibrated on `calibration_images` (uint8 [H, W, 3] arrays)."""
    from onnxruntime import quantization

    quantization.quantize_static(
        float_path, int8_path, _CalibrationReader(calibration_images),
        quant_format=quantization.QuantFormat.QDQ, op_types_to_quantize=list(INT8_OP_TYPES),
        per_channel=True, activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8, calibrate_method=quantization.CalibrationMethod.MinMax)


def export(module, class_names, output_dir, formats=FORMATS, calibration=None):
    """Writes model_<format>.onnx of `module` (an engine.serving.DetectionModule) for each format plus
    config.json and label_map.pbtxt into `output_dir`; returns {format: path}. int8 needs
    `calibration` (uint8 [H, W, 3] images). Written into a temporary folder and renamed into place; an
    existing `output_dir` is replaced only when it is itself an ONNX export (holds a model_*.onnx)."""
    import onnx

    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown ONNX format {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    if "int8" in formats and not calibration:
        raise ValueError("int8 export needs calibration images (e.g. --num_calibration_records)")
    config = module.config
    output_dir = os.path.abspath(output_dir)
    replaceable = atomic.must_hold_one_of([onnx_filename(f) for f in FORMATS], "an ONNX export")
    with atomic.staged_folder(output_dir, replaceable) as temp_dir:
        start = time.time()
        proto = convert(module.model, module.anchors, config)
        with tempfile.TemporaryDirectory() as scratch:
            float_path = os.path.join(temp_dir if "float32" in formats else scratch, onnx_filename("float32"))
            onnx.save(proto, float_path)
            logging.info("converted float32: %.1f MB in %.1f s", os.path.getsize(float_path) / 1e6,
                         time.time() - start)
            if "int8" in formats:
                start = time.time()
                int8_path = os.path.join(temp_dir, onnx_filename("int8"))
                quantize_int8(float_path, int8_path, calibration)
                logging.info("quantized int8: %.1f MB in %.1f s", os.path.getsize(int8_path) / 1e6,
                             time.time() - start)
        checkpoints.write(temp_dir, config, class_names)
    return {fmt: os.path.join(output_dir, onnx_filename(fmt)) for fmt in formats}


def make_session(path, num_threads=None, providers=None):
    """An ONNX Runtime InferenceSession of the file at `path` (`providers`: default CPU)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = num_threads
    return onnxruntime.InferenceSession(path, options, providers=providers or ["CPUExecutionProvider"])


class ONNXRunner:
    """uint8 [H, W, 3] numpy -> numpy dict of the graph's outputs without the batch axis (batch 1)."""

    def __init__(self, path, num_threads=None, providers=None):
        self.path = path
        self.session = make_session(path, num_threads, providers)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = sorted(o.name for o in self.session.get_outputs())
        if inputs != [INPUT_NAME] or outputs != sorted(OUTPUT_KEYS):
            raise ValueError(f"{path} is not an SSD ONNX export of export_onnx.py (inputs {inputs}, "
                             f"outputs {outputs})")

    def __call__(self, image):
        values = self.session.run(list(OUTPUT_KEYS), {INPUT_NAME: np.ascontiguousarray(image, np.uint8)[None]})
        return {key: value[0] for key, value in zip(OUTPUT_KEYS, values)}
