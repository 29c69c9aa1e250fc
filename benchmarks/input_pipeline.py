"""Training input speed (images/s): the full pipeline against read + decode + resize alone, same records.

A VOC-like set (500x375 JPEGs, 1-5 boxes each; benchmarks/synthetic.py's generator) is converted into
TFRecord shards in a temporary directory. Then, in interleaved rounds (the machine is shared and
noisy), four pipelines are timed over the same number of batches after a warm-up:

* full:   preprocessing.inputs.train_input_fn (read, decode, augment with the fused crop + resize,
          uint8 rounding, target encoding, batching);
* decode: the same interleaved shard reading, parse + JPEG decode + bilinear resize to S x S, batching;

each once with tf.data's default threading (all host cores; wall clock) and once held to one core (a
private threadpool of one thread, max_intra_op_parallelism 1): the "per core" figures, as wall clock
(`_1core`) and as images per CPU second of the process (`_per_cpu_s`), which other processes on a
shared machine do not disturb. Best-of and median over the rounds are printed; the ratios full / decode
are the figures to compare across machines.

--boxes_per_image 1,10,50,100 adds, per count, a set with exactly that many boxes per image: the full
pipeline's images per CPU second on one core, and the matcher's share of it (IoU + matching,
model/targets.match_real_boxes, on real batches of that set, timed alone on one core, over the full pipeline's time per image).

    python3 -m benchmarks.input_pipeline --images 512 --batch_size 32 --batches 8 --rounds 5
    python3 -m benchmarks.input_pipeline --images 128 --rounds 2 --boxes_per_image 1,10,50,100

The last line is one JSON object.
"""

import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from benchmarks import synthetic  # noqa: E402
from dataset import convert, fields, label_map, reader  # noqa: E402
from model import anchors as anchors_lib  # noqa: E402
from model import presets, targets  # noqa: E402
from preprocessing import inputs  # noqa: E402

NUM_SHARDS = 8
PRESET = "ssd300_vgg16"
WARMUP_BATCHES = 2

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 512, "Records in the generated set.")
flags.DEFINE_integer("batch_size", 32, "Images per batch.")
flags.DEFINE_integer("batches", 8, "Timed batches per measurement.")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds of the measurements (best and median reported).")
flags.DEFINE_list("boxes_per_image", [], "Also measure sets with exactly this many boxes per image.")


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
    """(images per wall-clock second, images per CPU second of this process) over `batches` batches."""
    iterator = iter(ds)
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    images = batch_size * batches
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu_start)


def make_records(root, count, boxes_per_image=None):
    """`count` VOC-like images converted to NUM_SHARDS train shards under root/records."""
    synthetic.make_voc_like(root, count, boxes_per_image=boxes_per_image)
    out = os.path.join(root, "records")
    results, _ = convert.convert(root, out, {"train": [convert.Split("VOC", None)]}, {"train": NUM_SHARDS},
                                 num_threads=2)
    assert results["train"].images == count
    return out


def _best_and_median(values):
    return round(max(values), 1), round(statistics.median(values), 1)


def time_pipelines(data_dir, config, anchors):
    """The four pipelines of the module docstring, interleaved over FLAGS.rounds: a result dict."""
    pipelines = {
        "full": lambda: inputs.train_input_fn(data_dir, config, anchors, FLAGS.batch_size),
        "decode": lambda: decode_input_fn(data_dir, config, FLAGS.batch_size),
        "full_1core": lambda: one_core(inputs.train_input_fn(data_dir, config, anchors, FLAGS.batch_size)),
        "decode_1core": lambda: one_core(decode_input_fn(data_dir, config, FLAGS.batch_size)),
    }
    wall = {name: [] for name in pipelines}
    cpu = {name: [] for name in pipelines if name.endswith("_1core")}
    for round_index in range(FLAGS.rounds):
        for name, make in pipelines.items():
            wall_rate, cpu_rate = images_per_s(make(), FLAGS.batch_size, FLAGS.batches)
            wall[name].append(wall_rate)
            if name in cpu:
                cpu[name].append(cpu_rate)
        print("round %d: %s; per CPU second: %s" % (
            round_index, ", ".join("%s %.1f" % (n, v[-1]) for n, v in wall.items()),
            ", ".join("%s %.1f" % (n, v[-1]) for n, v in cpu.items())), flush=True)
    result = {}
    for name, values in wall.items():
        prefix, _, suffix = name.partition("_")
        suffix = "_" + suffix if suffix else ""
        best, median = _best_and_median(values)
        result["%s_images_per_s%s" % (prefix, suffix)] = best
        result["%s_images_per_s%s_median" % (prefix, suffix)] = median
    for name, values in cpu.items():
        best, median = _best_and_median(values)
        result["%s_images_per_cpu_s" % name.split("_")[0]] = best
        result["%s_images_per_cpu_s_median" % name.split("_")[0]] = median
    for suffix in ("", "_1core"):
        for stat in ("", "_median"):
            full = result["full_images_per_s%s%s" % (suffix, stat)]
            decode = result["decode_images_per_s%s%s" % (suffix, stat)]
            result["ratio_full_over_decode%s%s" % (suffix, stat)] = round(full / decode, 3)
    for stat in ("", "_median"):
        result["ratio_full_over_decode_per_cpu_s%s" % stat] = round(
            result["full_images_per_cpu_s%s" % stat] / result["decode_images_per_cpu_s%s" % stat], 3)
    return result


def _cpu_seconds_per_batch(fn, batch, repeats):
    """CPU seconds of one call of `fn(*batch)` on one core (a one-thread tf.data map over the batch)."""
    ds = one_core(tf.data.Dataset.from_tensors(batch).repeat().map(fn))
    iterator = iter(ds)
    next(iterator)
    start = time.process_time()
    for _ in range(repeats):
        next(iterator)
    return (time.process_time() - start) / repeats


def box_scaling(root, config, anchors, boxes_per_image):
    """Full pipeline images per CPU second on one core, and the matcher's share, at `boxes_per_image`."""
    data_dir = make_records(os.path.join(root, "boxes%d" % boxes_per_image), FLAGS.images, boxes_per_image)
    rates = [images_per_s(one_core(inputs.train_input_fn(data_dir, config, anchors, FLAGS.batch_size)),
                          FLAGS.batch_size, FLAGS.batches)[1] for _ in range(FLAGS.rounds)]
    # Real batches' boxes (after augmentation: the crop keeps those whose centre it holds), re-made
    # by the same augmentation as train_input_fn, before target encoding.
    examples = inputs._augmented_dataset(data_dir, config, inputs.TrainInputConfig(), "train")
    _, boxes, labels, crowd = next(iter(examples.padded_batch(
        FLAGS.batch_size, padded_shapes=([config.image_size, config.image_size, 3], [None, 4], [None], [None]))))
    anchors_t = tf.constant(anchors)

    def match(boxes, labels, crowd):
        # encode_targets' IoU + matching on the real, non-crowd boxes.
        return targets.match_real_boxes(boxes, tf.logical_and(labels > 0, tf.logical_not(crowd)), anchors_t,
                                        config)[2]

    def encode(boxes, labels, crowd):
        return targets.encode_targets(boxes, labels, labels > 0, anchors_t, config, gt_is_crowd=crowd)

    repeats = max(2, FLAGS.batches)
    match_s = _cpu_seconds_per_batch(match, (boxes, labels, crowd), repeats) / FLAGS.batch_size
    encode_s = _cpu_seconds_per_batch(encode, (boxes, labels, crowd), repeats) / FLAGS.batch_size
    best = max(rates)
    numbers = {"full_images_per_cpu_s": round(best, 1),
               "mean_boxes_after_crop": round(float(tf.reduce_sum(tf.cast(labels > 0, tf.float32))) /
                                              FLAGS.batch_size, 2),
               "iou_and_match_ms_per_image": round(1e3 * match_s, 3),
               "encode_targets_ms_per_image": round(1e3 * encode_s, 3),
               "matcher_share": round(match_s * best, 3)}   # match seconds / full seconds per image
    logging.info("%d boxes per image: %s", boxes_per_image, numbers)
    return numbers


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as root:
        data_dir = make_records(root, FLAGS.images)
        config = presets.get(PRESET, reader.num_classes(os.path.join(data_dir, label_map.LABEL_MAP_FILENAME)))
        anchors = anchors_lib.generate(config)
        result = {"benchmark": "input_pipeline", "images": FLAGS.images, "batch_size": FLAGS.batch_size,
                  "timed_batches": FLAGS.batches, "rounds": FLAGS.rounds,
                  "image_size": [synthetic.WIDTH, synthetic.HEIGHT], "host_cores": os.cpu_count(),
                  "load_average_1min": round(os.getloadavg()[0], 2)}
        result.update(time_pipelines(data_dir, config, anchors))
        if FLAGS.boxes_per_image:
            result["boxes_per_image"] = {n: box_scaling(root, config, anchors, int(n))
                                         for n in FLAGS.boxes_per_image}
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
