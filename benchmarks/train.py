"""Training speed: the full training step against the bare network's forward + backward, per dtype policy.

    python3 -m benchmarks.train [--width_multiplier 1.0 --batch_size 8 --warmup_steps 1 --steps 3
                                 --policies float32,mixed_bfloat16 --jit_compile --data_dir DIR]
    python3 -m benchmarks.train --compare_xla     # each policy with and without XLA: xla_over_no_xla

Three timings per dtype policy, on the same model, batch size and strategy (training.make_strategy:
the default strategy on CPU, MirroredStrategy over the local GPUs):
  bare:      forward + backward + SGD apply with a trivial loss (the mean of each output) on one batch
             held in memory: what the network alone costs;
  in_memory: training.make_train_step (multibox loss with hard negative mining, weight decay, SGD
             with momentum) on that same batch and its encoded targets, repeated from memory;
  full:      training.make_train_step fed by train_input_fn (read, decode, augment, resize, match
             anchors, encode) on TFRecords, exactly as train_ssd.py runs it.
So full / bare is what loss, matching and input add to the network; in_memory splits it into the
in-step loss and the input pipeline (which on a few CPU cores competes with the step for the cores).
Records are the embedded sample's train split (250 images), converted into a temporary folder, unless
--data_dir is given. The net is randomly initialised with --num_classes (default 20, VOC) classes, from
the same seed under every policy, and trained at rate 0 (see _LEARNING_RATE) so that every step of every
timing runs on the initial weights. Every timing is the median of --steps single steps after
--warmup_steps untimed ones (tracing, allocation), the three taking turns step by step. The input pipeline alone is timed once, over as many
batches. The machine is shared and noisy: compare the ratios
measured in one run, not absolute numbers across runs. The last stdout line is one JSON object.
"""

import json
import os
import statistics
import tempfile
import time


import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from dataset import convert, fields, label_map  # noqa: E402
from model import anchors as anchors_lib  # noqa: E402
from engine import training
from model import presets  # noqa: E402
from nets import ssd  # noqa: E402
from preprocessing import inputs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "ssd300_vgg16", list(presets.NAMES), "Model preset.")
flags.DEFINE_float("width_multiplier", 1.0, "Channel multiplier (1.0: the paper's SSD300).")
flags.DEFINE_integer("num_classes", 20, "C of the net (VOC: 20); at least the data's classes.")
flags.DEFINE_string("data_dir", "", "train-* shards + label_map.pbtxt; default: the sample, converted.")
flags.DEFINE_integer("batch_size", 8, "Global images per step (split across replicas).")
flags.DEFINE_integer("warmup_steps", 1, "Untimed steps first (tracing, allocation).")
flags.DEFINE_integer("steps", 3, "Timed steps; the median is reported.")
flags.DEFINE_list("policies", ["float32", "mixed_bfloat16"], "Keras dtype policies to time.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the replica step (bare and training steps alike).")
flags.DEFINE_bool("compare_xla", False, "Time every policy without and with XLA (results '<policy>' and "
                  "'<policy>_xla') and report their ratio; overrides --jit_compile.")
flags.DEFINE_float("weight_decay", 5e-4, "As train_ssd.py: part of what the training step adds.")
flags.DEFINE_integer("seed", 0, "Seed of weights, shuffling and augmentation.")

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dataset")
# Rate 0: a from-scratch net under SGD at 1e-3 diverges within a few steps (engine/training.py says why),
# and NaN or huge activations would time different arithmetic per policy. The rate is an optimizer
# variable, so the update costs exactly what it does at any other rate; the weights stay at their init.
_LEARNING_RATE = 0.0
# train_ssd.py's default momentum.
_MOMENTUM = 0.9
# train_ssd.py's --mixed_precision names per Keras policy: float16 needs the loss-scaling optimizer.
_MIXED_PRECISION = {"float32": "none", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def _convert_sample(output_dir):
    splits = {"train": [convert.Split.parse("sample:train")]}
    convert.convert(SAMPLE_DIR, output_dir, splits, {"train": 2}, num_threads=2)
    return output_dir


def _median_step_seconds(steps, warmup, rounds):
    """Per name of `steps` {name: fn}: (median wall-clock seconds of one call, its last numpy values).

    Each fn is called `warmup` times untimed, then the fns take turns for `rounds` timed calls each:
    interleaved, a burst of load from another process on the shared machine hits them all alike
    instead of skewing one ratio.
    """
    for step in steps.values():
        for _ in range(warmup):
            tf.nest.map_structure(lambda t: t.numpy(), step())
    seconds = {name: [] for name in steps}
    values = {}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            values[name] = tf.nest.map_structure(lambda t: t.numpy(), step())  # .numpy() waits for it
            seconds[name].append(time.perf_counter() - start)
    return {name: (statistics.median(seconds[name]), values[name]) for name in steps}


def _make_bare_step(model, optimizer, strategy, jit_compile):
    """One distributed forward + backward + apply with a trivial loss: the network's own cost."""

    def replica_step(images):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            loss = tf.add_n([tf.reduce_mean(outputs[key]) for key in (fields.CLS_LOGITS, fields.BOX_CODES)])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {"loss": loss}

    compiled_step = tf.function(replica_step, jit_compile=True) if jit_compile else replica_step

    @tf.function
    def step(iterator):
        per_replica = strategy.run(compiled_step, args=(next(iterator),))
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    return step


def _in_memory(strategy, element):
    """A distributed iterator repeating `element` (a global batch), each replica getting its share."""

    def dataset_fn(ctx):
        per_replica = ctx.get_per_replica_batch_size(FLAGS.batch_size)
        first = ctx.input_pipeline_id * per_replica
        share = tf.nest.map_structure(lambda t: t[first:first + per_replica], element)
        return tf.data.Dataset.from_tensors(share).repeat()

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def time_input(data_dir, config, anchors):
    """Images/s of train_input_fn alone (batches pulled as fast as it makes them)."""
    batches = iter(inputs.train_input_fn(data_dir, config, anchors, FLAGS.batch_size,
                                         input_config=inputs.TrainInputConfig(seed=FLAGS.seed)))
    timed = _median_step_seconds({"input": lambda: next(batches)}, FLAGS.warmup_steps, FLAGS.steps)
    return FLAGS.batch_size / timed["input"][0]


def benchmark(policy, data_dir, config, anchors, strategy, jit_compile):
    """Timings of one dtype policy, XLA on or off: a dict of named numbers."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)  # as train_ssd.py: global while the model is built and traced
    try:
        keras.utils.set_random_seed(FLAGS.seed)
        input_config = inputs.TrainInputConfig(seed=FLAGS.seed)
        dataset = strategy.distribute_datasets_from_function(
            lambda ctx: inputs.train_input_fn(data_dir, config, anchors, FLAGS.batch_size, ctx, input_config))
        with strategy.scope():
            model = ssd.build(config)
            optimizers = {}
            for name in ("bare", "train"):
                optimizers[name] = training.make_optimizer(_LEARNING_RATE, _MOMENTUM,
                                                           _MIXED_PRECISION[policy])
                optimizers[name].build(model.trainable_variables)
        bare_step = _make_bare_step(model, optimizers["bare"], strategy, jit_compile)
        train_step = training.make_train_step(model, optimizers["train"], config, strategy,
                                              FLAGS.weight_decay, jit_compile)

        # One real batch, so bare and in_memory see the images (and targets) that full sees.
        batch = next(iter(inputs.train_input_fn(data_dir, config, anchors, FLAGS.batch_size,
                                                input_config=input_config)))
        bare_images = _in_memory(strategy, batch[0])
        held_batch = _in_memory(strategy, batch)
        full_batches = iter(dataset)
        steps = {"bare": lambda: bare_step(bare_images), "in_memory": lambda: train_step(held_batch),
                 "full": lambda: train_step(full_batches)}
        timed = _median_step_seconds(steps, FLAGS.warmup_steps, FLAGS.steps)
    finally:
        keras.config.set_dtype_policy(previous)
    seconds = {name: s for name, (s, _) in timed.items()}
    numbers = {f"{name}_images_per_s": FLAGS.batch_size / s for name, s in seconds.items()}
    numbers.update({
        "bare_ms_per_image": 1e3 * seconds["bare"] / FLAGS.batch_size,
        "full_ms_per_image": 1e3 * seconds["full"] / FLAGS.batch_size,
        "full_over_bare_time": seconds["full"] / seconds["bare"],
        "in_memory_over_bare_time": seconds["in_memory"] / seconds["bare"],
        "full_over_in_memory_time": seconds["full"] / seconds["in_memory"],
        # Finite, and a few per image at init: the full step computed the real loss on real targets.
        "full_total_loss": float(timed["full"][1]["total_loss"]),
        "full_positives_per_image": float(timed["full"][1]["num_positives"]) / FLAGS.batch_size,
    })
    logging.info("%s: %s", policy, numbers)
    return numbers


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = FLAGS.data_dir or _convert_sample(scratch)
        data_names = label_map.read_label_map(os.path.join(data_dir, label_map.LABEL_MAP_FILENAME))
        if FLAGS.num_classes < len(data_names):
            raise ValueError(f"--num_classes {FLAGS.num_classes} < the data's {len(data_names)} classes")
        config = presets.get(FLAGS.model, FLAGS.num_classes, width_multiplier=FLAGS.width_multiplier)
        anchors = anchors_lib.generate(config)
        strategy = training.make_strategy()
        input_images_per_s = time_input(data_dir, config, anchors)
        jit_modes = (False, True) if FLAGS.compare_xla else (FLAGS.jit_compile,)
        results = {}
        for policy in FLAGS.policies:
            for jit in jit_modes:
                key = policy + ("_xla" if jit and FLAGS.compare_xla else "")
                results[key] = benchmark(policy, data_dir, config, anchors, strategy, jit)
                if jit and FLAGS.compare_xla:
                    for name in ("bare", "full"):
                        results[key][f"{name}_xla_over_no_xla"] = (
                            results[key][f"{name}_images_per_s"] / results[policy][f"{name}_images_per_s"])
    if "float32" in results:
        for numbers in results.values():
            for name in ("bare", "full"):
                numbers[f"{name}_speedup_vs_float32"] = (numbers[f"{name}_images_per_s"] /
                                                         results["float32"][f"{name}_images_per_s"])
    summary = {"benchmark": "train", "device": "gpu" if tf.config.list_physical_devices("GPU") else "cpu",
               "num_replicas": strategy.num_replicas_in_sync, "model": FLAGS.model,
               "width_multiplier": FLAGS.width_multiplier, "num_classes": FLAGS.num_classes,
               "batch_size": FLAGS.batch_size, "warmup_steps": FLAGS.warmup_steps, "steps": FLAGS.steps,
               "jit_compile": FLAGS.jit_compile, "input_images_per_s": round(input_images_per_s, 4),
               "results": {p: {k: round(v, 4) for k, v in n.items()} for p, n in results.items()}}
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
