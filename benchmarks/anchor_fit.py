"""Speed of the dataset doctor's anchor measurements (model/anchor_stats.py).

    python3 -m benchmarks.anchor_fit [--num_boxes 50000 --brute_force_boxes 2000 --model ssd300_vgg16]

On `--num_boxes` random boxes (log-uniform sides 2%-80% of the image, log-normal aspects): the
grid form of the best-anchor IoU against brute force over model.anchors.generate (on
`--brute_force_boxes` of them, scaled per box), and one `fit_anchors` on all of them. One wall-clock
run each on a shared, noisy machine: `grid_speedup` (brute-force time per box over grid time per
box, same run) is the number to compare across runs. The last stdout line is one JSON object.
"""

import json
import time

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from model import anchor_stats, anchors, presets  # noqa: E402

flags.DEFINE_integer("num_boxes", 50000, "Boxes measured and fitted.")
flags.DEFINE_integer("brute_force_boxes", 2000, "Boxes the brute-force baseline is timed on.")
flags.DEFINE_enum("model", "ssd300_vgg16", presets.NAMES, "Preset.")
flags.DEFINE_integer("seed", 0, "Seed of the boxes and the fit.")
FLAGS = flags.FLAGS


def random_boxes(n, seed):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.1, 0.9, (n, 2))
    side = np.exp(rng.uniform(np.log(0.02), np.log(0.8), n))
    aspect = np.exp(rng.normal(0, 0.7, n))
    h, w = side * np.sqrt(aspect), side / np.sqrt(aspect)
    return np.clip(np.stack([centre[:, 0] - h / 2, centre[:, 1] - w / 2, centre[:, 0] + h / 2,
                             centre[:, 1] + w / 2], axis=1), 0, 1)


def main(argv):
    del argv
    config = presets.get(FLAGS.model, 20)
    boxes = random_boxes(FLAGS.num_boxes, FLAGS.seed)
    all_anchors = anchors.generate(config)
    sample = boxes[:FLAGS.brute_force_boxes]
    start = time.perf_counter()
    brute, _ = anchor_stats.best_anchor_iou(sample, all_anchors)
    brute_s = time.perf_counter() - start
    start = time.perf_counter()
    grid = anchor_stats.grid_best_iou(boxes, config)
    grid_s = time.perf_counter() - start
    max_difference = float(np.max(np.abs(grid[:len(sample)] - brute)))
    start = time.perf_counter()
    _, info = anchor_stats.fit_anchors(boxes, config, seed=FLAGS.seed)
    fit_s = time.perf_counter() - start
    result = {
        "model": config.name, "anchors": int(len(all_anchors)), "boxes": FLAGS.num_boxes,
        "brute_force_boxes_per_s": len(sample) / brute_s, "grid_boxes_per_s": len(boxes) / grid_s,
        "grid_speedup": (brute_s / len(sample)) / (grid_s / len(boxes)),
        "grid_vs_brute_force_max_difference": max_difference,
        "fit_seconds": fit_s, "fit_coverage_before": info["coverage_before"],
        "fit_coverage_after": info["coverage_after"],
    }
    print(f"{config.name}: grid form {result['grid_speedup']:.0f}x brute force, fit of "
          f"{FLAGS.num_boxes} boxes {fit_s:.1f} s")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
