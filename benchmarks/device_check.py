"""One-command accelerator check (benchmarks/device_check.sh runs this): training, input and inference speed.

    benchmarks/device_check.sh                 # on a GPU host: SSD300, the full grid, within ~8 minutes
    benchmarks/device_check.sh --tiny          # a minute on a CPU (the default where no GPU is visible)

In one process, all with random weights (20 classes, VOC):
  train:     SSD300 training images/s (engine.training.make_train_step: loss, hard negatives, weight decay,
             SGD) on an in-memory uint8 batch with encoded targets, per dtype policy (float32 and
             mixed_bfloat16), XLA off and on, at global batch 32, 64 and 128 (MirroredStrategy over the
             visible GPUs), median-free: --steps steps timed together after --warmup_steps (compilation);
  input:     preprocessing.inputs.train_input_fn on VOC-like records with tf.data's default threading,
             i.e. every host core (the rate that must feed the training figure), and cores used;
  inference: engine.serving.DetectionModule.serve_images (uint8 in: resize, the network, NMS
             post-processing) batch-1 latency (median of calls) and batch-64 throughput, per policy.
Each measurement is skipped, and marked so, once --budget_s seconds have passed, so the run stays within
its time on a shared device. The last stdout line is one JSON object; `ratios` divides each training
figure by float32 without XLA at the same batch (its baseline from the same run).
"""

import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from benchmarks import input_pipeline  # noqa: E402
from engine import serving, training  # noqa: E402
from model import anchors as anchors_lib  # noqa: E402
from model import presets, targets  # noqa: E402
from nets import ssd  # noqa: E402
from preprocessing import inputs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("tiny", None, "Tiny CPU version (width 0.125, batch 2, few steps); default: when no GPU.")
flags.DEFINE_list("batch_sizes", ["32", "64", "128"], "Global training batch sizes.")
flags.DEFINE_list("policies", ["mixed_bfloat16", "float32"], "Keras dtype policies.")
flags.DEFINE_list("xla", ["on", "off"], "XLA modes of the training step.")
flags.DEFINE_integer("warmup_steps", 3, "Untimed training steps first (tracing, XLA compilation).")
flags.DEFINE_integer("steps", 20, "Timed training steps per configuration.")
flags.DEFINE_integer("input_images", 512, "VOC-like records for the input measurement.")
flags.DEFINE_integer("input_batch", 32, "Batch size of the input measurement.")
flags.DEFINE_integer("input_batches", 20, "Timed input batches.")
flags.DEFINE_integer("latency_calls", 50, "Timed batch-1 inference calls (median).")
flags.DEFINE_integer("throughput_batch", 64, "Inference throughput batch.")
flags.DEFINE_integer("throughput_calls", 10, "Timed throughput calls (median).")
flags.DEFINE_float("budget_s", 450.0, "Skip measurements that would start after this many seconds.")

NUM_CLASSES = 20
_TINY = dict(batch_sizes=["2"], policies=["float32"], warmup_steps=1, steps=2, input_images=16,
             input_batch=8, input_batches=2, latency_calls=3, throughput_batch=2, throughput_calls=2)
_TINY_WIDTH = 0.125
MLPERF_NUM_CLASSES = 80   # COCO
_MIXED_PRECISION = {"float32": "none", "mixed_bfloat16": "bfloat16"}


def _synthetic_batch(config, anchors, batch_size, seed=0):
    """uint8 images [B, S, S, 3] and targets encoded from 3 random boxes per image."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size, config.image_size, config.image_size, 3), dtype=np.uint8)
    centres = rng.uniform(0.2, 0.8, (batch_size, 3, 2))
    sizes = rng.uniform(0.1, 0.5, (batch_size, 3, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1).astype(np.float32)
    labels = rng.integers(1, config.num_classes + 1, (batch_size, 3)).astype(np.int32)
    encoded = targets.encode_targets(boxes, labels, np.ones_like(labels, bool), anchors, config)
    return tf.constant(images), encoded


def time_training(config, anchors, strategy, policy, jit, batch_size):
    """Training images/s of one configuration (the model is built under `policy`)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        with strategy.scope():
            model = ssd.build(config)
            # Rate 0 (benchmarks/train.py says why): random weights stay finite; the update costs the same.
            optimizer = training.make_optimizer(0.0, 0.9, _MIXED_PRECISION[policy])
            optimizer.build(model.trainable_variables)
        step = training.make_train_step(model, optimizer, config, strategy, 5e-4, jit_compile=jit)
        batch = _synthetic_batch(config, anchors, batch_size)
        iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
        for _ in range(FLAGS.warmup_steps):
            losses = step(iterator)
        float(losses["total_loss"])
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            losses = step(iterator)
        loss = float(losses["total_loss"])          # waits for the last step
        seconds = time.perf_counter() - start
    finally:
        keras.config.set_dtype_policy(previous)
    if not np.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss} ({policy}, xla {jit}, batch {batch_size})")
    return batch_size * FLAGS.steps / seconds


def time_input(root, config, anchors):
    data_dir = input_pipeline.make_records(root, FLAGS.input_images)
    rate, _ = input_pipeline.images_per_s(inputs.train_input_fn(data_dir, config, anchors, FLAGS.input_batch),
                                          FLAGS.input_batch, FLAGS.input_batches)
    return {"images_per_s": round(rate, 1), "host_cores": os.cpu_count(),
            "images_per_s_per_core": round(rate / os.cpu_count(), 1)}


def _median_call_seconds(fn, argument, calls):
    tf.nest.map_structure(lambda t: t.numpy(), fn(argument))     # trace + warm up
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn(argument))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def time_inference(config, anchors, policy):
    module = serving.DetectionModule(ssd.build(config, policy), anchors, config)
    size = config.image_size
    rng = np.random.default_rng(0)
    one = tf.constant(rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8))
    many = tf.constant(rng.integers(0, 256, (FLAGS.throughput_batch, size, size, 3), dtype=np.uint8))
    latency = _median_call_seconds(module.serve_images, one, FLAGS.latency_calls)
    throughput = FLAGS.throughput_batch / _median_call_seconds(module.serve_images, many, FLAGS.throughput_calls)
    return {"batch1_latency_ms": round(1e3 * latency, 3),
            f"batch{FLAGS.throughput_batch}_images_per_s": round(throughput, 1)}


def main(argv):
    del argv
    gpus = tf.config.list_physical_devices("GPU")
    tiny = (not gpus) if FLAGS.tiny is None else FLAGS.tiny
    if tiny:
        for name, value in _TINY.items():
            if not FLAGS[name].present:
                setattr(FLAGS, name, value)
    config = presets.get("ssd300_vgg16", NUM_CLASSES, width_multiplier=_TINY_WIDTH if tiny else 1.0)
    anchors = anchors_lib.generate(config)
    strategy = training.make_strategy()
    start = time.perf_counter()
    skipped = []

    def within_budget(name):
        if time.perf_counter() - start < FLAGS.budget_s:
            return True
        skipped.append(name)
        logging.warning("skipped %s: past --budget_s %.0f", name, FLAGS.budget_s)
        return False

    train = {}
    for policy in FLAGS.policies:
        for xla in FLAGS.xla:
            for batch_size in (int(b) for b in FLAGS.batch_sizes):
                name = f"{policy}_xla_{xla}_batch{batch_size}"
                if within_budget("train/" + name):
                    train[name] = round(time_training(config, anchors, strategy, policy, xla == "on",
                                                      batch_size), 2)
                    logging.info("train %s: %.1f images/s (%.0f s elapsed)", name, train[name],
                                 time.perf_counter() - start)
    # The MLPerf SSD-ResNet34 (issue: its preset) at the grid's largest batch, every policy, XLA as set.
    resnet_config = presets.get("ssd300_resnet34", MLPERF_NUM_CLASSES,
                                width_multiplier=_TINY_WIDTH if tiny else 1.0)
    resnet_anchors = anchors_lib.generate(resnet_config)
    resnet34 = {}
    largest = max(int(b) for b in FLAGS.batch_sizes)
    for policy in FLAGS.policies:
        for xla in FLAGS.xla:
            name = f"{policy}_xla_{xla}_batch{largest}"
            if within_budget("train_resnet34/" + name):
                resnet34[name] = round(time_training(resnet_config, resnet_anchors, strategy, policy,
                                                     xla == "on", largest), 2)
                logging.info("train ssd300_resnet34 %s: %.1f images/s", name, resnet34[name])
    ratios = {}
    for name, rate in train.items():
        baseline = "float32_xla_off_batch" + name.rsplit("_batch", 1)[1]
        if baseline in train and name != baseline:
            ratios[name + "_over_" + baseline] = round(rate / train[baseline], 3)
    result = {"benchmark": "device_check", "tiny": tiny, "device": gpus[0].name if gpus else "cpu",
              "num_replicas": strategy.num_replicas_in_sync, "width_multiplier": config.width_multiplier,
              "train_images_per_s": train, "ratios": ratios, "train_resnet34_images_per_s": resnet34}
    if within_budget("input"):
        with tempfile.TemporaryDirectory() as root:
            result["input"] = time_input(root, config, anchors)
        logging.info("input: %s", result["input"])
    result["inference"] = {}
    for policy in FLAGS.policies:
        if within_budget("inference/" + policy):
            result["inference"][policy] = time_inference(config, anchors, policy)
            logging.info("inference %s: %s", policy, result["inference"][policy])
    result["skipped"] = skipped
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
