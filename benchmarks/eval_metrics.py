"""Metric time of the evaluation: VOC (both metrics), COCO (pycocotools), result files, and the model
doctor's numbers (metrics/analysis.py: TIDE, PR curves at IoU 0.5 and 0.75, confusion matrix, AP by size
and aspect, worst images; PNG rendering aside).

    python3 -m benchmarks.eval_metrics [--num_images 5000 --detections_per_image 200 --seed 0]
    python3 -m benchmarks.eval_metrics --detections_per_image 100   # the doctor's budget: 5,000 x 100

A synthetic but realistic set: 20 classes, on average 3 ground truths per image (10% difficult),
and per image `--detections_per_image` detections, 30% of them jittered copies of a ground truth
(mostly its class, scores skewed high) and the rest random boxes of random classes with low scores,
the mix an SSD with score threshold 0.01 and 200 detections per image produces. Timings are one
wall-clock run each; the machine is shared and noisy, so `voc_over_coco` (VOC time as a fraction
of pycocotools' time, measured in the same run) is the number to compare across runs;
`analysis_over_metrics` is the doctor's time over the metrics' own (VOC + COCO) time, the doctor's budget
is 2x. The last stdout line is one JSON object.
"""

import json
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks.synthetic import NUM_CLASSES, make_image
from metrics import analysis
from metrics.evaluator import DetectionEvaluator

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_images", 5000, "Synthetic evaluation images.")
flags.DEFINE_integer("detections_per_image", 200, "Detections per image (SSD keeps 200).")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic set.")


def main(argv):
    del argv

    rng = np.random.default_rng(FLAGS.seed)
    images = [make_image(rng, FLAGS.detections_per_image) for _ in range(FLAGS.num_images)]
    evaluator = DetectionEvaluator(["class%02d" % c for c in range(1, NUM_CLASSES + 1)])

    timings = {}
    start = time.perf_counter()
    for k, image in enumerate(images):
        evaluator.add("%06d" % k, *image)
    timings["add_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    voc_results = evaluator.evaluate(metrics=("voc07", "voc12"))
    timings["voc_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    coco_results = evaluator.evaluate(metrics=("coco",))
    timings["coco_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    numbers, _ = analysis.analyze(evaluator.evaluation_set(), evaluator.class_names)
    timings["analysis_seconds"] = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as output_dir:
        start = time.perf_counter()
        evaluator.write_results(output_dir)
        timings["write_results_seconds"] = time.perf_counter() - start

    print(evaluator.format_table({**voc_results, **coco_results}))
    summary = {"num_images": FLAGS.num_images, "detections_per_image": FLAGS.detections_per_image,
               **{k: round(v, 3) for k, v in timings.items()},
               "voc_over_coco": round(timings["voc_seconds"] / timings["coco_seconds"], 4),
               "analysis_over_metrics": round(timings["analysis_seconds"]
                                              / (timings["voc_seconds"] + timings["coco_seconds"]), 4),
               "tide_AP50": numbers["tide"]["AP50"], "tide_largest": numbers["tide"]["largest"],
               "voc07_mAP": voc_results["voc07"]["mAP"], "voc12_mAP": voc_results["voc12"]["mAP"],
               "coco_AP": coco_results["coco"]["AP"]}
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
