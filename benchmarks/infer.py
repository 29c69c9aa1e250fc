"""Inference speed: the exported SavedModel and the in-process checkpoint path against the bare forward.

    python3 -m benchmarks.infer [--width_multiplier 1.0 --model_dir logs/ --policies float32,mixed_bfloat16]

Three callables per Keras dtype policy, all timed in the same run so their ratios are meaningful on a
shared, noisy machine:
  forward      the network (its normalization layer included) on S x S float 0-255 input (tf.function);
  checkpoint   the model_dir opened through the detector door (engine.serving.load_detector under the
               policy): numpy uint8 in, resize + normalize + network + post-processing in the graph,
               trimmed numpy rows out, as detect_ssd.py and stream_ssd.py call it;
  saved_model  its module exported (engine/serving.export) and opened through the same door.
Latency: median seconds of one call at batch 1. Throughput: images/s at --throughput_batch (median call).

TFLite rows (float32 policy, --tflite): the same module converted by engine/tflite_export.py to
float32, float16 and int8 (calibrated on --calibration_images random images), each opened through the
door (the LiteRT interpreter, --tflite_threads threads) on a uint8 S x S image; batch-1 latency and its
ratio to the SavedModel's batch-1 latency measured in the same run (tflite_latency_over_saved_model).
MediaPipe rows (--mediapipe, needs --tflite): MediaPipe Tasks' ObjectDetector on the float32 and int8
files (their fixed S x S input and metadata), batch-1 latency and over the SavedModel's.
ONNX rows (float32 policy, --onnx): engine/onnx_export.py's float32 and int8 files (int8 calibrated on
the same images) in ONNX Runtime's CPU provider through the door (--tflite_threads threads), batch-1
latency and over the SavedModel's (onnx_latency_over_saved_model).

SSD300 with random weights (written as a model_dir in a temporary folder) unless --model_dir names a
trained model_dir (its preset and width then win).
Random heads score nearly every anchor ~1/(C+1) > 0.01, so post-processing runs at its worst case
(config.max_detections_per_class candidates per class). The bfloat16 variant builds the network under
Keras' mixed_bfloat16 policy; its outputs are float32 like the float32 model's. Defaults keep a CPU run
of full-width SSD300 to a few minutes. The JSON also gives the load average before and after (the machine
is shared). The last stdout line is one JSON object.
"""

import json
import os
import statistics
import tempfile
import time


import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from engine import checkpoints, onnx_export, serving, tflite_export  # noqa: E402
from model import presets  # noqa: E402
from nets import ssd  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_float("width_multiplier", 1.0, "Width of the random model (ignored with --model_dir).")
flags.DEFINE_enum("preset", "ssd300_vgg16", presets.NAMES, "Preset of the random model (ignored with "
                  "--model_dir), e.g. ssdlite320_mobilenet_v3_large.")
flags.DEFINE_string("model_dir", None, "A trained model_dir to time instead of random weights.")
flags.DEFINE_list("policies", ["float32", "mixed_bfloat16"], "Keras dtype policies to time.")
flags.DEFINE_integer("num_classes", 20, "C of the random model (VOC: 20).")
flags.DEFINE_integer("warmup", 1, "Untimed calls before each measurement (tracing, allocation).")
flags.DEFINE_integer("latency_iterations", 5, "Timed batch-1 calls; the median is reported.")
flags.DEFINE_integer("throughput_batch", 16, "Batch size of the throughput measurement.")
flags.DEFINE_integer("throughput_iterations", 2, "Timed calls at --throughput_batch; the median is used.")
flags.DEFINE_integer("seed", 0, "Seed of weights and images.")
flags.DEFINE_bool("tflite", True, "Also time the float32 model's TFLite float32 / float16 / int8 files.")
flags.DEFINE_integer("tflite_threads", os.cpu_count(), "Interpreter threads (TensorFlow uses every core).")
flags.DEFINE_integer("calibration_images", 4, "Random images the int8 files are calibrated on.")
flags.DEFINE_bool("mediapipe", True, "With --tflite, also time MediaPipe's ObjectDetector on the float32 / int8 files.")
flags.DEFINE_bool("onnx", True, "Also time the float32 model's ONNX float32 / int8 files in ONNX Runtime.")

PATHS = ("forward", "checkpoint", "saved_model")


def _numpy(result):
    """Waits for a call's result: tensors to numpy (the door's detectors already return numpy)."""
    return tf.nest.map_structure(lambda t: t.numpy() if tf.is_tensor(t) else t, result)


def _median_seconds(fn, argument, warmup, iterations):
    for _ in range(warmup):
        _numpy(fn(argument))
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        _numpy(fn(argument))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _model_dir(root):
    """--model_dir, or a model_dir of a random SSD300 (float32 weights, --seed) written under `root` once."""
    if FLAGS.model_dir:
        return FLAGS.model_dir
    model_dir = os.path.join(root, "random_model_dir")
    if not os.path.isdir(model_dir):
        config = presets.get(FLAGS.preset, FLAGS.num_classes, width_multiplier=FLAGS.width_multiplier)
        keras.utils.set_random_seed(FLAGS.seed)
        tf.train.CheckpointManager(tf.train.Checkpoint(model=ssd.build(config)), model_dir, max_to_keep=1).save()
        checkpoints.write(model_dir, config, tuple(f"class_{i}" for i in range(1, FLAGS.num_classes + 1)))
    return model_dir


def _latency_rows(prefix, calls, image, latencies):
    """{prefix_batch1_latency_s: {name: s}, prefix_latency_over_saved_model: {name: ratio}} of each
    callable in `calls` on `image`, against the SavedModel's batch-1 latency of the same run."""
    rows = {f"{prefix}_batch1_latency_s": {}, f"{prefix}_latency_over_saved_model": {}}
    for name, call in calls.items():
        seconds = _median_seconds(call, image, FLAGS.warmup, FLAGS.latency_iterations)
        rows[f"{prefix}_batch1_latency_s"][name] = seconds
        rows[f"{prefix}_latency_over_saved_model"][name] = seconds / latencies["saved_model"]
        logging.info("%s %s batch 1: %.3f s per call", prefix, name, seconds)
    return rows


def _mediapipe_rows(tflite_paths, image, latencies):
    """MediaPipe Tasks' ObjectDetector on the float32 and int8 TFLite files (batch 1)."""
    import mediapipe
    from mediapipe.tasks.python import BaseOptions, vision

    frame = mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=np.ascontiguousarray(image))
    detectors = {fmt: vision.ObjectDetector.create_from_options(vision.ObjectDetectorOptions(
        base_options=BaseOptions(model_asset_path=tflite_paths[fmt]))) for fmt in ("float32", "int8")}
    try:
        return _latency_rows("mediapipe", {fmt: (lambda _, d=d: d.detect(frame)) for fmt, d in detectors.items()},
                             image, latencies)
    finally:
        for detector in detectors.values():
            detector.close()


def _onnx_rows(module, class_names, export_root, calibration, image, latencies):
    """ONNX Runtime (CPU provider) on the float32 and int8 ONNX files, through the door (batch 1)."""
    start = time.perf_counter()
    paths = onnx_export.export(module, class_names, os.path.join(export_root, "onnx"), calibration=calibration)
    rows = {"onnx_export_s": time.perf_counter() - start,
            "onnx_file_mb": {fmt: os.path.getsize(path) / 1e6 for fmt, path in paths.items()}}
    calls = {fmt: serving.load_detector(path, num_threads=FLAGS.tflite_threads) for fmt, path in paths.items()}
    rows.update(_latency_rows("onnx", calls, image, latencies))
    return rows


def _tflite_rows(module, class_names, export_root, calibration, image, latencies):
    """Batch-1 latency of each TFLite format (the door, LiteRT), and over the SavedModel's of the same
    run; with --mediapipe, MediaPipe's rows on the same files."""
    start = time.perf_counter()
    paths = tflite_export.export(module, class_names, os.path.join(export_root, "tflite"),
                                 calibration=calibration)
    rows = {"tflite_export_s": time.perf_counter() - start,
            "tflite_file_mb": {fmt: os.path.getsize(path) / 1e6 for fmt, path in paths.items()}}
    calls = {fmt: serving.load_detector(path, num_threads=FLAGS.tflite_threads) for fmt, path in paths.items()}
    rows.update(_latency_rows("tflite", calls, image, latencies))
    if FLAGS.mediapipe:
        rows.update(_mediapipe_rows(paths, image, latencies))
    return rows


def _runtime_rows(module, config, class_names, export_root, rng, latencies):
    """The TFLite, MediaPipe and ONNX rows (as flagged) on one random S x S image; the int8 files are
    calibrated on --calibration_images random images."""
    size = config.image_size
    calibration = [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                   for _ in range(FLAGS.calibration_images)]
    image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    rows = {}
    if FLAGS.tflite:
        rows.update(_tflite_rows(module, class_names, export_root, calibration, image, latencies))
    if FLAGS.onnx:
        rows.update(_onnx_rows(module, class_names, export_root, calibration, image, latencies))
    return rows


def benchmark(policy, export_root):
    """Latency, throughput and their ratios to the forward for one dtype policy: a dict of numbers."""
    checkpoint = serving.load_detector(_model_dir(export_root), dtype_policy=policy)
    module, config, class_names = checkpoint.runtime, checkpoint.config, checkpoint.class_names
    size = config.image_size
    export_start = time.perf_counter()
    export_dir = serving.export(module, class_names, os.path.join(export_root, policy))
    export_s = time.perf_counter() - export_start
    saved_model = serving.load_detector(export_dir)

    model = module.model
    forward = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    callables = {"forward": forward, "checkpoint": checkpoint, "saved_model": saved_model}
    rng = np.random.default_rng(FLAGS.seed)
    result = {"export_s": export_s, "batch1_latency_s": {}, "throughput_images_per_s": {}}
    for batch, iterations, key in ((1, FLAGS.latency_iterations, "batch1_latency_s"),
                                   (FLAGS.throughput_batch, FLAGS.throughput_iterations,
                                    "throughput_images_per_s")):
        images = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
        # The forward is fed S x S float 0-255 pixels (it normalizes them itself): cast once here.
        floats = tf.constant(images, tf.float32)
        for path in PATHS:
            argument = floats if path == "forward" else images
            seconds = _median_seconds(callables[path], argument, FLAGS.warmup, iterations)
            result[key][path] = seconds if batch == 1 else batch / seconds
            logging.info("%s batch %d %s: %.3f s per call", policy, batch, path, seconds)
    if policy == "float32":
        result.update(_runtime_rows(module, config, class_names, export_root, rng, result["batch1_latency_s"]))
    result["mean_detections_per_image"] = float(np.mean([len(found) for found in saved_model(images)]))
    result["latency_over_forward"] = {p: result["batch1_latency_s"][p] / result["batch1_latency_s"]["forward"]
                                      for p in PATHS[1:]}
    result["throughput_over_forward"] = {
        p: result["throughput_images_per_s"][p] / result["throughput_images_per_s"]["forward"] for p in PATHS[1:]}
    return result, config


def main(argv):
    del argv
    load_before = os.getloadavg()
    results, config = {}, None
    with tempfile.TemporaryDirectory(prefix="ssd_infer_bench_") as export_root:
        for policy in FLAGS.policies:
            results[policy], config = benchmark(policy, export_root)
    if "float32" in results:
        base = results["float32"]
        for policy, numbers in results.items():
            numbers["saved_model_throughput_vs_float32"] = (numbers["throughput_images_per_s"]["saved_model"] /
                                                            base["throughput_images_per_s"]["saved_model"])
    summary = {
        "benchmark": "inference_saved_model_vs_checkpoint",
        "device": "cpu" if not tf.config.list_physical_devices("GPU") else "gpu",
        "preset": config.name,
        "width_multiplier": config.width_multiplier,
        "weights": FLAGS.model_dir or "random",
        "throughput_batch": FLAGS.throughput_batch,
        "warmup": FLAGS.warmup,
        "latency_iterations": FLAGS.latency_iterations,
        "throughput_iterations": FLAGS.throughput_iterations,
        "tflite_threads": FLAGS.tflite_threads,
        # The 1-minute load average (os.getloadavg) before and after: the machine is shared.
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "results": results,
    }
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
