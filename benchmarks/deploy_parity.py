"""Deployment parity: every exported file in the runtime a deployer would use, against the SavedModel, on
every image of a split (docs/deployment.md, "Parity and accuracy").

    python3 -m benchmarks.deploy_parity --model_dir logs/sample --data_dir dataset/tfrecords [--split val]

Exports the model_dir's latest checkpoint as a SavedModel, TFLite float32 / int8 (fixed input, with
metadata) and ONNX float32 / int8 (int8 calibrated on --num_calibration_records training records) into a
temporary folder, then on each image of --split counts the SavedModel's detections matched by:
  onnxruntime   the float32 .onnx through the door: same class, box and score within 1e-4
  opencv_dnn    cv2.dnn.readNetFromONNX of the float32 .onnx: same class, IoU >= 0.99, score within 2e-3
  openvino      the float32 .onnx compiled for CPU (only if `openvino` imports: it is no project
                dependency): same class, IoU >= 0.99, score within 2e-3
  mediapipe     MediaPipe's ObjectDetector on the float32 .tflite: same class, MediaPipe's integer
                [x, y, width, height] within 1 px, score within --mediapipe_score_tolerance; on the
                images as they are and on the images resized to S x S first (MediaPipe's resampler idle)
and the VOC07 mAP of each format (and the int8 files' agreement mAP: their detections scored against
the float file's detections >= 0.3 taken as ground truth; the ground-truth mAP only when the model's
classes are the split's label map). The last stdout line is one JSON object.
"""

import json
import os
import tempfile

import numpy as np
from absl import app, flags, logging

from dataset import fields, label_map, reader
from engine import onnx_export, serving, tflite_export
from metrics.evaluator import DetectionEvaluator

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "The model_dir whose latest checkpoint is exported and compared.")
flags.DEFINE_string("data_dir", "dataset/tfrecords", "Record shards: --split's images, calibration records.")
flags.DEFINE_string("split", "val", "The split compared on.")
flags.DEFINE_integer("num_calibration_records", 100, "Training records the int8 files are calibrated on.")
flags.DEFINE_float("mediapipe_score_tolerance", 0.02, "Score tolerance of the MediaPipe match on the images "
                   "as they are (MediaPipe resizes with its own resampler).")


def _matched(same):
    """Rows of the reference (columns of `same` [N ours, M reference]) given their own row of ours."""
    used = np.zeros(same.shape[0], bool)
    count = 0
    for j in range(same.shape[1]):
        candidates = np.nonzero(same[:, j] & ~used)[0]
        if candidates.size:
            used[candidates[0]] = True
            count += 1
    return count


def _iou(a, b):
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), -1)
    area = lambda boxes: np.prod(boxes[:, 2:] - boxes[:, :2], -1)   # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-12)


def _same_by_iou(found, reference):
    return ((found.classes[:, None] == reference.classes[None]) & (_iou(found.boxes, reference.boxes) >= 0.99) &
            (np.abs(found.scores[:, None] - reference.scores[None]) <= 2e-3))


def _mediapipe_same(detector, image, reference, class_names, score_tolerance):
    import mediapipe

    result = detector.detect(mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
    height, width = image.shape[:2]
    names = np.array([d.categories[0].category_name for d in result.detections])
    boxes = np.array([[d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width,
                       d.bounding_box.height] for d in result.detections], np.float64).reshape(-1, 4)
    scores = np.array([d.categories[0].score for d in result.detections])
    y0, x0, y1, x1 = reference.boxes.T.astype(np.float64)
    pixels = np.stack([x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height], -1)
    return ((names[:, None] == np.array([class_names[c - 1] for c in reference.classes])[None]) &
            (np.abs(boxes[:, None] - pixels[None]).max(-1) <= 1.0 + 1e-4) &
            (np.abs(scores[:, None] - reference.scores[None]) <= score_tolerance))


def _net_runners():
    """{name: callable(uint8 [H, W, 3]) -> Detections} for OpenCV DNN and (if installed) OpenVINO."""
    import cv2

    keys = list(tflite_export.OUTPUT_KEYS)
    runners = {}

    def opencv(path):
        net = cv2.dnn.readNetFromONNX(path)

        def run(image):
            net.setInput(image[None], tflite_export.INPUT_NAME)
            return serving.Detections.from_padded(dict(zip(keys, net.forward(keys))), 0)
        return run
    runners["opencv_dnn"] = opencv
    try:
        import openvino
    except ImportError:
        logging.warning("openvino is not installed: its row is left out")
    else:
        def openvino_runner(path):
            core = openvino.Core()
            compiled = core.compile_model(core.read_model(path), "CPU")

            def run(image):
                result = compiled(image[None])
                return serving.Detections.from_padded({k: result[compiled.output(k)] for k in keys}, 0)
            return run
        runners["openvino"] = openvino_runner
    return runners


def main(argv):
    del argv
    from mediapipe.tasks.python import BaseOptions, vision

    module, config, class_names, checkpoint = serving.from_checkpoint(FLAGS.model_dir)
    calibration = tflite_export.calibration_images(FLAGS.data_dir, "train", FLAGS.num_calibration_records)
    with tempfile.TemporaryDirectory(prefix="ssd_deploy_parity_") as root:
        paths = {"saved_model": serving.export(module, class_names, os.path.join(root, "saved"))}
        tflite = tflite_export.export(module, class_names, os.path.join(root, "tflite"), ("float32", "int8"),
                                      calibration)
        onnx = onnx_export.export(module, class_names, os.path.join(root, "onnx"), calibration=calibration)
        paths.update({f"tflite_{k}": v for k, v in tflite.items()})
        paths.update({f"onnx_{k}": v for k, v in onnx.items()})
        detectors = {name: serving.load_detector(path) for name, path in paths.items()}
        nets = {name: make(onnx["float32"]) for name, make in _net_runners().items()}
        mediapipe_detector = vision.ObjectDetector.create_from_options(vision.ObjectDetectorOptions(
            base_options=BaseOptions(model_asset_path=tflite["float32"])))
        counts = {"reference_rows": 0, "onnxruntime": 0, "mediapipe": 0, "mediapipe_square_input": 0,
                  **{name: 0 for name in nets}}
        # Ground-truth mAP only for a model of the split's own label map (the tests' random model has 3 classes).
        same_labels = tuple(label_map.read_label_map(os.path.join(FLAGS.data_dir, label_map.LABEL_MAP_FILENAME))) == (
            tuple(class_names))
        evaluators = {name: DetectionEvaluator(class_names) for name in detectors} if same_labels else {}
        agreement = {name: DetectionEvaluator(class_names) for name in ("tflite_int8", "onnx_int8")}
        for count, example in enumerate(reader.read_split(FLAGS.data_dir, FLAGS.split), 1):
            image, image_id = example[fields.IMAGE].numpy(), example[fields.IMAGE_ID].numpy().decode()
            found = {name: detector(image) for name, detector in detectors.items()}
            reference = found["saved_model"]
            counts["reference_rows"] += len(reference)
            ours = found["onnx_float32"]
            if len(ours) == len(reference):
                same = ((ours.classes[:, None] == reference.classes[None]) &
                        (np.abs(ours.scores[:, None] - reference.scores[None]) <= 1e-4) &
                        (np.abs(ours.boxes[:, None] - reference.boxes[None]).max(-1) <= 1e-4))
                counts["onnxruntime"] += _matched(same)
            for name, run in nets.items():
                counts[name] += _matched(_same_by_iou(run(image), reference))
            counts["mediapipe"] += _matched(_mediapipe_same(mediapipe_detector, image, reference, class_names,
                                                            FLAGS.mediapipe_score_tolerance))
            square = tflite_export.resize_uint8(image, config.image_size)
            counts["mediapipe_square_input"] += _matched(_mediapipe_same(
                mediapipe_detector, square, detectors["saved_model"](square), class_names, 1e-5))
            truth = (example[fields.BOXES].numpy(), example[fields.LABELS].numpy(), example[fields.DIFFICULT].numpy())
            for name, evaluator in evaluators.items():
                evaluator.add(image_id, image.shape[0], image.shape[1], *truth, found[name].boxes,
                              found[name].scores, found[name].classes)
            for name, evaluator in agreement.items():
                float_rows = found[name.replace("int8", "float32")].select(0.3)
                evaluator.add(image_id, image.shape[0], image.shape[1], float_rows.boxes,
                              float_rows.classes.astype(np.int64), np.zeros(len(float_rows), bool),
                              found[name].boxes, found[name].scores, found[name].classes.astype(np.int64))
            logging.log_every_n_seconds(logging.INFO, "%d images compared", 10, count)
        mediapipe_detector.close()
    summary = {
        "benchmark": "deploy_parity", "checkpoint": checkpoint, "preset": config.name,
        "width_multiplier": config.width_multiplier, "split": FLAGS.split, "images": count,
        "matched_rows": counts,
        "voc07_map": {name: e.evaluate(["voc07"])["voc07"]["mAP"] for name, e in evaluators.items()},
        "int8_agreement_voc07_map": {name: e.evaluate(["voc07"])["voc07"]["mAP"] for name, e in agreement.items()},
    }
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    flags.mark_flag_as_required("model_dir")
    app.run(main)
