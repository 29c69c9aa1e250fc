"""Forward speed of SSD300/SSD512 per dtype policy, and post-processing time against the forward.

    python3 -m benchmarks.model [--batch_size 4 --warmup 2 --iterations 5 --presets ... --policies ...]

Randomly initialised weights (speed does not depend on their values, except post-processing: an
untrained head scores nearly every anchor ~1/(C+1) > 0.01, so NMS sees its worst-case candidate count,
max_detections_per_class per class). Everything runs inside tf.function; timings are wall-clock
medians over --iterations calls after --warmup calls. Machines are shared and noisy, so compare the
ratios measured in one run (bfloat16 vs float32, post-processing vs forward), not absolute numbers
across runs. The last stdout line is one JSON object.
"""

import json
import statistics
import time


import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from dataset import fields  # noqa: E402
from model import anchors as anchors_lib  # noqa: E402
from model import postprocess as postprocess_lib  # noqa: E402
from model import presets  # noqa: E402
from nets import ssd  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("presets", list(presets.NAMES), "Model presets to time.")
flags.DEFINE_list("policies", ["float32", "mixed_bfloat16"], "Keras dtype policies to time.")
flags.DEFINE_integer("batch_size", 4, "Images per forward call.")
flags.DEFINE_integer("warmup", 2, "Untimed calls first (tracing, allocation).")
flags.DEFINE_integer("iterations", 5, "Timed calls; the median is reported.")
flags.DEFINE_integer("num_classes", 20, "C, object classes (VOC: 20).")
flags.DEFINE_integer("seed", 0, "Seed for weights and images.")

# Spread of mean-subtracted 0-255 pixels, so activations are in a realistic range.
_PIXEL_STDDEV = 60.0


def _median_seconds(fn, args, warmup, iterations):
    for _ in range(warmup):
        tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn(*args))   # .numpy() waits for the result
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def benchmark(preset, policy):
    """Timings of one preset under one dtype policy: a dict of named numbers."""
    config = presets.get(preset, FLAGS.num_classes)
    keras.utils.set_random_seed(FLAGS.seed)
    model = ssd.build(config, policy)
    images = tf.random.normal([FLAGS.batch_size, config.image_size, config.image_size, 3],
                              stddev=_PIXEL_STDDEV, seed=FLAGS.seed)
    anchors = tf.constant(anchors_lib.generate(config))

    forward = tf.function(lambda x: model(x, training=False))
    post = tf.function(lambda logits, codes: postprocess_lib.postprocess(logits, codes, anchors, config))

    forward_s = _median_seconds(forward, (images,), FLAGS.warmup, FLAGS.iterations)
    outputs = forward(images)
    post_s = _median_seconds(post, (outputs[fields.CLS_LOGITS], outputs[fields.BOX_CODES]),
                             FLAGS.warmup, FLAGS.iterations)
    detections = post(outputs[fields.CLS_LOGITS], outputs[fields.BOX_CODES])
    result = {
        # How loaded NMS was: detections kept per image (at most config.max_detections).
        "mean_detections_per_image": float(tf.reduce_mean(tf.cast(detections[fields.NUM_DETECTIONS], tf.float32))),
        "forward_images_per_s": FLAGS.batch_size / forward_s,
        "forward_ms_per_image": 1e3 * forward_s / FLAGS.batch_size,
        "postprocess_ms_per_image": 1e3 * post_s / FLAGS.batch_size,
        "postprocess_over_forward": post_s / forward_s,
    }
    logging.info("%s %s: %s", preset, policy, result)
    return result


def main(argv):
    del argv
    results = {}
    for preset in FLAGS.presets:
        results[preset] = {policy: benchmark(preset, policy) for policy in FLAGS.policies}
        if "float32" in results[preset]:
            base = results[preset]["float32"]["forward_images_per_s"]
            for policy, numbers in results[preset].items():
                numbers["forward_speedup_vs_float32"] = numbers["forward_images_per_s"] / base
    summary = {
        "benchmark": "model_forward_and_postprocess",
        "device": "cpu" if not tf.config.list_physical_devices("GPU") else "gpu",
        "batch_size": FLAGS.batch_size,
        "warmup": FLAGS.warmup,
        "iterations": FLAGS.iterations,
        "num_classes": FLAGS.num_classes,
        "results": results,
    }
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
