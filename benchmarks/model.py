"""Forward speed of SSD300/SSD512 per dtype policy, and post-processing time against the forward.

    python3 -m benchmarks.model [--batch_size 4 --warmup 2 --iterations 5 --presets ... --policies ...]
    python3 -m benchmarks.model --presets ssdlite320_mobilenet_v3_large --policies float32 \
        --ssdlite_full_tail --backbone_paddings torch,keras      # what Keras's padding costs in speed

A MobileNetV3 preset is timed once per --backbone_paddings entry (config.backbone_padding: "torch" or
"keras", the padding Keras's ImageNet weights need), as `<preset>[<padding>]` when more than one is
given. Their forward calls are then also timed interleaved (one call of each variant per round, so a
shared machine's changing load falls on all alike): "forward_interleaved_images_per_s" and
"forward_vs_first_padding", the ratio to the first entry's interleaved speed.

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
flags.DEFINE_list("backbone_paddings", [presets.TORCH_PADDING],
                  "MobileNetV3 presets: the backbone paddings to time (presets.BACKBONE_PADDINGS).")
flags.DEFINE_bool("ssdlite_full_tail", False, "MobileNetV3 presets: build the full tail (reduced_tail=False), "
                  "as an ImageNet backbone does (Keras's always).")

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


def interleaved_forward_seconds(configs, policy):
    """Median forward seconds of each config's model, timed in rounds of one call per model."""
    forwards = []
    for config in configs:
        keras.utils.set_random_seed(FLAGS.seed)
        model = ssd.build(config, policy)
        forwards.append(tf.function(lambda x, model=model: model(x, training=False)))
    size = configs[0].image_size
    images = tf.random.normal([FLAGS.batch_size, size, size, 3], stddev=_PIXEL_STDDEV, seed=FLAGS.seed)
    for forward in forwards:
        _median_seconds(forward, (images,), FLAGS.warmup, 1)
    seconds = [[] for _ in forwards]
    for _ in range(FLAGS.iterations):
        for times, forward in zip(seconds, forwards):
            times.append(_median_seconds(forward, (images,), 0, 1))
    return [statistics.median(times) for times in seconds]


def benchmark(preset, policy, overrides=None):
    """Timings of one preset (with config `overrides`) under one dtype policy: a dict of named numbers."""
    config = presets.get(preset, FLAGS.num_classes, **(overrides or {}))
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
        variants = {preset: {}}
        if presets.get(preset, FLAGS.num_classes).backbone == "mobilenet_v3_large":
            tail = {"reduced_tail": False} if FLAGS.ssdlite_full_tail else {}
            variants = {(f"{preset}[{padding}]" if len(FLAGS.backbone_paddings) > 1 else preset):
                        dict(tail, backbone_padding=padding) for padding in FLAGS.backbone_paddings}
        for name, overrides in variants.items():
            results[name] = {policy: benchmark(preset, policy, overrides) for policy in FLAGS.policies}
            if "float32" in results[name]:
                base = results[name]["float32"]["forward_images_per_s"]
                for policy, numbers in results[name].items():
                    numbers["forward_speedup_vs_float32"] = numbers["forward_images_per_s"] / base
        if len(variants) > 1:
            for policy in FLAGS.policies:
                configs = [presets.get(preset, FLAGS.num_classes, **o) for o in variants.values()]
                seconds = interleaved_forward_seconds(configs, policy)
                for name, forward_s in zip(variants, seconds):
                    results[name][policy]["forward_interleaved_images_per_s"] = FLAGS.batch_size / forward_s
                    results[name][policy]["forward_vs_first_padding"] = seconds[0] / forward_s
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
