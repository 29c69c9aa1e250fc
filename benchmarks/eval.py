"""Evaluation speed: the full eval path against the forward alone on the same batches, and metric time.

    python3 -m benchmarks.eval [--width_multiplier 1.0 --num_images 64 --batch_size 8
                                --metric_images 5000 --detections_per_image 200]

Three timings over the same `--num_images` val images (the embedded sample's val shards, converted
into a temporary folder, unless --data_dir is given), each one pass after one untimed warm-up batch:
  forward:  the net alone on batches already in memory;
  detect:   forward + post-processing (decode, per-class NMS, top-k) on the same batches;
  full:     eval_input_fn (read, decode, resize) + detect + DetectionEvaluator.add, as eval_ssd.py runs.
The net is randomly initialised with --num_classes (default 20, VOC) classes: the sample's 8 classes
keep their ids and the rest are unused names. An untrained head scores nearly every anchor above the
0.01 threshold, so NMS sees its worst case (benchmarks/model.py says why). Then the metric time of
--metric_images synthetic images x --detections_per_image detections (benchmarks/eval_metrics.py's
generator): adding them and computing VOC07, VOC2010+ and COCO at once. The machine is shared and
noisy; compare the ratios measured in one run. The last stdout line is one JSON object.
"""

import json
import os
import tempfile
import time


import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from benchmarks.synthetic import NUM_CLASSES, make_image  # noqa: E402
from dataset import convert, label_map  # noqa: E402
from metrics.evaluator import METRIC_NAMES, DetectionEvaluator  # noqa: E402
from model import anchors as anchors_lib  # noqa: E402
from engine import evaluation
from model import presets  # noqa: E402
from nets import ssd  # noqa: E402
from preprocessing import inputs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "ssd300_vgg16", list(presets.NAMES), "Model preset.")
flags.DEFINE_float("width_multiplier", 1.0, "Channel multiplier (1.0: the paper's SSD300).")
flags.DEFINE_integer("num_classes", 20, "C of the net (VOC: 20); at least the data's classes.")
flags.DEFINE_string("data_dir", "", "val-* shards + label_map.pbtxt; default: the sample, converted.")
flags.DEFINE_integer("num_images", 64, "Val images timed (whole batches; at most the split's size).")
flags.DEFINE_integer("batch_size", 8, "Images per forward call.")
flags.DEFINE_integer("metric_images", 5000, "Synthetic images for the metric time; 0 skips it.")
flags.DEFINE_integer("detections_per_image", 200, "Detections per synthetic image (SSD keeps 200).")
flags.DEFINE_integer("seed", 0, "Seed of the weights and the synthetic metric set.")

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dataset")


def _convert_sample(output_dir):
    splits = {"val": [convert.Split.parse("sample:val")]}
    convert.convert(SAMPLE_DIR, output_dir, splits, {"val": 2}, num_threads=2)
    return output_dir


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def time_eval_path(data_dir):
    """Seconds of forward, detect and the full eval path over the same whole batches; a dict."""
    data_names = label_map.read_label_map(os.path.join(data_dir, label_map.LABEL_MAP_FILENAME))
    if FLAGS.num_classes < len(data_names):
        raise ValueError(f"--num_classes {FLAGS.num_classes} < the data's {len(data_names)} classes")
    class_names = list(data_names) + [f"unused{i}" for i in range(len(data_names) + 1, FLAGS.num_classes + 1)]
    config = presets.get(FLAGS.model, FLAGS.num_classes, width_multiplier=FLAGS.width_multiplier)
    keras.utils.set_random_seed(FLAGS.seed)
    model = ssd.build(config)
    detect = evaluation.make_detect_fn(model, anchors_lib.generate(config), config)
    forward = tf.function(lambda images: model(images, training=False))

    num_batches = FLAGS.num_images // FLAGS.batch_size  # whole batches: one traced shape
    batches = list(inputs.eval_input_fn(data_dir, config, FLAGS.batch_size).take(num_batches))
    if len(batches) < num_batches or batches[-1][0].shape[0] < FLAGS.batch_size:
        raise ValueError(f"{data_dir} has fewer than {num_batches} whole batches of {FLAGS.batch_size}")
    num_images = num_batches * FLAGS.batch_size
    for fn in (forward, detect):  # trace and warm up
        tf.nest.map_structure(lambda t: t.numpy(), fn(batches[0][0]))

    def run_all(fn):
        for features, _ in batches:
            tf.nest.map_structure(lambda t: t.numpy(), fn(features))  # .numpy() waits for the result

    forward_s, _ = _timed(lambda: run_all(forward))
    detect_s, _ = _timed(lambda: run_all(detect))
    full_s, (evaluator, _) = _timed(lambda: evaluation.run_detection(
        detect, inputs.eval_input_fn(data_dir, config, FLAGS.batch_size).take(num_batches), class_names))
    assert evaluator.num_images == num_images
    numbers = {"num_images": num_images, "forward_images_per_s": num_images / forward_s,
               "detect_images_per_s": num_images / detect_s, "eval_images_per_s": num_images / full_s,
               "eval_over_forward_time": full_s / forward_s, "detect_over_forward_time": detect_s / forward_s,
               "mean_detections_per_image": evaluator.evaluation_set().det_scores.size / num_images}
    logging.info("eval path: %s", numbers)
    return numbers


def time_metrics():
    """Seconds to add --metric_images synthetic images and compute every metric; a dict."""
    rng = np.random.default_rng(FLAGS.seed)
    images = [make_image(rng, FLAGS.detections_per_image) for _ in range(FLAGS.metric_images)]
    evaluator = DetectionEvaluator(["class%02d" % c for c in range(1, NUM_CLASSES + 1)])

    def add_all():
        for k, image in enumerate(images):
            evaluator.add("%06d" % k, *image)

    add_s, _ = _timed(add_all)
    evaluate_s, results = _timed(lambda: evaluator.evaluate(METRIC_NAMES))
    numbers = {"metric_images": FLAGS.metric_images, "detections_per_image": FLAGS.detections_per_image,
               "metric_add_seconds": add_s, "metric_evaluate_seconds": evaluate_s,
               "metric_total_seconds": add_s + evaluate_s}
    logging.info("metrics: %s (voc07 mAP %s)", numbers, results["voc07"]["mAP"])
    return numbers


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = FLAGS.data_dir or _convert_sample(scratch)
        summary = {"benchmark": "eval", "device": "gpu" if tf.config.list_physical_devices("GPU") else "cpu",
                   "model": FLAGS.model, "width_multiplier": FLAGS.width_multiplier,
                   "num_classes": FLAGS.num_classes, "batch_size": FLAGS.batch_size,
                   **time_eval_path(data_dir)}
    if FLAGS.metric_images:
        summary.update(time_metrics())
        # What the metrics add to evaluating that many images at this run's full-path speed.
        eval_s = FLAGS.metric_images / summary["eval_images_per_s"]
        summary["metric_over_eval_path_time"] = summary["metric_total_seconds"] / eval_s
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()},
                     sort_keys=True))


if __name__ == "__main__":
    app.run(main)
