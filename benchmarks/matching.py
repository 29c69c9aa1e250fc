"""Target encoding speed (images/s) under each matching rule: Caffe's bipartite against ssd.pytorch's.

model.targets.encode_targets on SSD300's 8,732 anchors, batched as preprocessing/inputs.py calls it
(one call per batch, boxes padded to the batch's largest count), in one tf.function per rule. Two
ground-truth mixes: "voc" (1-5 boxes per image, spread out, VOC-like) and "crowd" (20-40 small
overlapping boxes per image, COCO-like: many shared best anchors, so the greedy rounds run). Rules and
mixes are timed in interleaved rounds in one process, so machine load hits both alike; the ratio
caffe_bipartite / ssd_pytorch is the figure. The last line is one JSON object.

    python3 -m benchmarks.matching --batch_size 32 --batches 20 --rounds 5
"""

import dataclasses
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from model import anchors as anchors_lib  # noqa: E402
from model import matcher, presets, targets  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 32, "Images per batch.")
flags.DEFINE_integer("batches", 20, "Timed batches per measurement.")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds (the median is reported).")


def ground_truth(rng, batch_size, low, high, crowd):
    """Padded boxes [B, G, 4], labels [B, G], valid [B, G] with low..high boxes per image."""
    counts = rng.integers(low, high + 1, batch_size)
    g = int(counts.max())
    boxes = np.zeros((batch_size, g, 4), np.float32)
    for b, n in enumerate(counts):
        if crowd:
            centre = rng.uniform(0.2, 0.8, 2) + rng.normal(0, 0.08, (n, 2))
            size = rng.uniform(0.03, 0.2, (n, 2))
        else:
            centre = rng.uniform(0.2, 0.8, (n, 2))
            size = rng.uniform(0.1, 0.6, (n, 2))
        boxes[b, :n] = np.clip(np.concatenate([centre - size / 2, centre + size / 2], 1), 0, 1)
    valid = np.arange(g)[None, :] < counts[:, None]
    labels = np.where(valid, 1, 0).astype(np.int32)
    return boxes, labels, valid


def main(argv):
    del argv
    args = FLAGS
    config = presets.get("ssd300_vgg16", 20)
    anchors = anchors_lib.generate(config)
    rng = np.random.default_rng(0)
    mixes = {"voc": (1, 5, False), "crowd": (20, 40, True)}
    data = {mix: [ground_truth(rng, args.batch_size, *spec) for _ in range(args.batches)]
            for mix, spec in mixes.items()}
    encoders = {}
    for rule in matcher.RULES:
        rule_config = dataclasses.replace(config, matching=rule)
        encoders[rule] = tf.function(lambda b, l, v, c=rule_config: targets.encode_targets(b, l, v, anchors, c),
                                     input_signature=[tf.TensorSpec([None, None, 4], tf.float32),
                                                      tf.TensorSpec([None, None], tf.int32),
                                                      tf.TensorSpec([None, None], tf.bool)])
    rates = {(mix, rule): [] for mix in mixes for rule in matcher.RULES}
    for round_index in range(args.rounds + 1):          # round 0 traces and warms up, untimed
        for (mix, rule), values in rates.items():
            start = time.perf_counter()
            for batch in data[mix]:
                encoders[rule](*batch)[targets.fields.NUM_POSITIVES].numpy()
            rate = args.batch_size * args.batches / (time.perf_counter() - start)
            if round_index:
                values.append(rate)
        if round_index:
            print("round %d: %s" % (round_index, ", ".join(
                "%s/%s %.0f" % (mix, rule, values[-1]) for (mix, rule), values in rates.items())), flush=True)
    result = {"batch_size": args.batch_size, "timed_batches": args.batches, "rounds": args.rounds}
    for (mix, rule), values in rates.items():
        result[f"{mix}_{rule}_images_per_s"] = round(statistics.median(values), 1)
    for mix in mixes:
        ratios = [c / p for c, p in zip(rates[(mix, matcher.CAFFE_BIPARTITE)], rates[(mix, matcher.SSD_PYTORCH)])]
        result[f"{mix}_ratio_caffe_over_pytorch_median"] = round(statistics.median(ratios), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
