"""Training input speed (images/s): the full pipeline against read + decode + resize alone, same records.

A VOC-like set (500x375 JPEGs, 1-5 boxes each; benchmarks/synthetic.py's generator) is converted into
TFRecord shards in a temporary directory. Then, in interleaved rounds (the machine is shared and
noisy), four pipelines are timed over the same number of batches after a warm-up:

* full:   preprocessing.inputs.train_input_fn (read, decode, augment with the fused crop + resize,
          normalise, target encoding, batching);
* decode: the same interleaved shard reading, parse + JPEG decode + bilinear resize to S x S, batching;

each once with tf.data's default threading and once held to one core (a private threadpool of one
thread, max_intra_op_parallelism 1): the "per core" figure. Best-of and median over the rounds are
printed; the last line is one JSON object.

    python3 -m benchmarks.input_pipeline --images 512 --batch_size 32 --batches 8 --rounds 5
"""

import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import synthetic  # noqa: E402
from dataset import convert, fields, label_map, reader  # noqa: E402
from model import anchors as anchors_lib  # noqa: E402
from model import presets  # noqa: E402
from preprocessing import inputs  # noqa: E402

NUM_SHARDS = 8
PRESET = "ssd300_vgg16"
WARMUP_BATCHES = 2

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 512, "Records in the generated set.")
flags.DEFINE_integer("batch_size", 32, "Images per batch.")
flags.DEFINE_integer("batches", 8, "Timed batches per measurement.")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds of the four measurements (best and median reported).")


def decode_input_fn(data_dir, config, batch_size, cycle_length=inputs.TrainInputConfig.cycle_length):
    """Read + decode + resize only: the floor any training pipeline on these records pays."""
    files = reader.shard_files(data_dir, "train")
    ds = inputs._read_shards(files, cycle_length).repeat()
    ds = ds.map(lambda s: inputs.resize(reader.parse_example(s)[fields.IMAGE], config),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def one_core(ds):
    """The dataset with tf.data held to a single thread, ops inside it to one thread too."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def images_per_s(ds, batch_size, batches):
    iterator = iter(ds)
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batch_size * batches / (time.perf_counter() - start)


def make_records(root, count):
    """`count` VOC-like images converted to NUM_SHARDS train shards under root/records."""
    synthetic.make_voc_like(root, count)
    out = os.path.join(root, "records")
    results, _ = convert.convert(root, out, {"train": [convert.Split("VOC", None)]}, {"train": NUM_SHARDS},
                                 num_threads=2)
    assert results["train"].images == count
    return out


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as root:
        data_dir = make_records(root, FLAGS.images)
        config = presets.get(PRESET, reader.num_classes(os.path.join(data_dir, label_map.LABEL_MAP_FILENAME)))
        anchors = anchors_lib.generate(config)
        pipelines = {
            "full": lambda: inputs.train_input_fn(data_dir, config, anchors, FLAGS.batch_size),
            "decode": lambda: decode_input_fn(data_dir, config, FLAGS.batch_size),
            "full_1core": lambda: one_core(inputs.train_input_fn(data_dir, config, anchors, FLAGS.batch_size)),
            "decode_1core": lambda: one_core(decode_input_fn(data_dir, config, FLAGS.batch_size)),
        }
        rates = {name: [] for name in pipelines}
        for round_index in range(FLAGS.rounds):
            for name, make in pipelines.items():
                rates[name].append(images_per_s(make(), FLAGS.batch_size, FLAGS.batches))
            print("round %d: %s" % (round_index, ", ".join(
                "%s %.1f" % (name, values[-1]) for name, values in rates.items())), flush=True)

    result = {"images": FLAGS.images, "batch_size": FLAGS.batch_size, "timed_batches": FLAGS.batches,
              "rounds": FLAGS.rounds, "image_size": [synthetic.WIDTH, synthetic.HEIGHT]}
    for name, values in rates.items():
        suffix = name.replace("full", "").replace("decode", "")
        prefix = name[:len(name) - len(suffix)]
        result["%s_images_per_s%s" % (prefix, suffix)] = round(max(values), 1)
        result["%s_images_per_s%s_median" % (prefix, suffix)] = round(statistics.median(values), 1)
    for suffix in ("", "_1core"):
        for stat in ("", "_median"):
            full = result["full_images_per_s%s%s" % (suffix, stat)]
            decode = result["decode_images_per_s%s%s" % (suffix, stat)]
            result["ratio_full_over_decode%s%s" % (suffix, stat)] = round(full / decode, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
