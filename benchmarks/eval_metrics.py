"""Metric time of the evaluation: VOC (both metrics), COCO (pycocotools) and result files.

    python3 benchmarks/eval_metrics.py [--num_images 5000 --detections_per_image 200 --seed 0]

A synthetic but realistic set: 20 classes, on average 3 ground truths per image (10% difficult),
and per image `--detections_per_image` detections, 30% of them jittered copies of a ground truth
(mostly its class, scores skewed high) and the rest random boxes of random classes with low scores,
the mix an SSD with score threshold 0.01 and 200 detections per image produces. Timings are one
wall-clock run each; the machine is shared and noisy, so `voc_over_coco` (VOC time as a fraction
of pycocotools' time, measured in the same run) is the number to compare across runs. The last
stdout line is one JSON object.
"""

import argparse
import json
import os
import sys
import tempfile
import time

# Run as a script from anywhere: the repository root holds the packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from metrics.evaluator import DetectionEvaluator  # noqa: E402

NUM_CLASSES = 20  # PASCAL VOC
MEAN_GTS_PER_IMAGE = 3.0
DIFFICULT_FRACTION = 0.1
NEAR_GT_FRACTION = 0.3
BOX_JITTER = 0.05  # normalized, per coordinate (std)


def _random_boxes(rng, n):
    """[n, 4] normalized yxyx boxes with sides in [0.05, 0.6]."""
    size = rng.uniform(0.05, 0.6, size=(n, 2))
    corner = rng.uniform(0.0, 1.0, size=(n, 2)) * (1.0 - size)
    return np.concatenate([corner, corner + size], axis=1).astype(np.float32)


def make_image(rng, detections_per_image):
    """One synthetic image: (height, width, gt boxes, labels, difficult, det boxes, scores, classes)."""
    height, width = int(rng.integers(300, 501)), int(rng.integers(300, 501))
    num_gt = max(1, int(rng.poisson(MEAN_GTS_PER_IMAGE)))
    gt_boxes = _random_boxes(rng, num_gt)
    gt_labels = rng.integers(1, NUM_CLASSES + 1, size=num_gt)
    difficult = rng.random(num_gt) < DIFFICULT_FRACTION

    num_near = int(detections_per_image * NEAR_GT_FRACTION)
    source = rng.integers(0, num_gt, size=num_near)
    near = np.clip(gt_boxes[source] + rng.normal(0, BOX_JITTER, size=(num_near, 4)), 0.0, 1.0)
    near = np.concatenate([np.minimum(near[:, :2], near[:, 2:]), np.maximum(near[:, :2], near[:, 2:])], 1)
    near_classes = np.where(rng.random(num_near) < 0.8, gt_labels[source],
                            rng.integers(1, NUM_CLASSES + 1, size=num_near))
    num_far = detections_per_image - num_near
    det_boxes = np.concatenate([near, _random_boxes(rng, num_far)]).astype(np.float32)
    det_scores = np.concatenate([rng.beta(5, 2, size=num_near), rng.beta(1, 8, size=num_far)])
    det_classes = np.concatenate([near_classes, rng.integers(1, NUM_CLASSES + 1, size=num_far)])
    order = np.argsort(-det_scores, kind="stable")  # post-processing hands them sorted
    return (height, width, gt_boxes, gt_labels, difficult,
            det_boxes[order], det_scores[order].astype(np.float32), det_classes[order])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=5000)
    parser.add_argument("--detections_per_image", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    images = [make_image(rng, args.detections_per_image) for _ in range(args.num_images)]
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

    with tempfile.TemporaryDirectory() as output_dir:
        start = time.perf_counter()
        evaluator.write_results(output_dir)
        timings["write_results_seconds"] = time.perf_counter() - start

    print(evaluator.format_table({**voc_results, **coco_results}))
    summary = {"num_images": args.num_images, "detections_per_image": args.detections_per_image,
               **{k: round(v, 3) for k, v in timings.items()},
               "voc_over_coco": round(timings["voc_seconds"] / timings["coco_seconds"], 4),
               "voc07_mAP": voc_results["voc07"]["mAP"], "voc12_mAP": voc_results["voc12"]["mAP"],
               "coco_AP": coco_results["coco"]["AP"]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
