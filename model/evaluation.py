"""Evaluating a model on the val shards: eval input -> forward -> post-processing -> metrics.

Shared by eval_ssd.py and train_ssd.py's in-process evaluation. Every val image is seen exactly once
(eval_input_fn keeps the last, smaller batch; the evaluator rejects a repeated id). Detections stay
normalized: the evaluator scales them to each image's original size at the edge.
"""

import time

import tensorflow as tf
from absl import logging

from dataset import fields
from metrics.evaluator import METRIC_NAMES, DetectionEvaluator
from model import postprocess, summaries
from preprocessing import inputs
from preprocessing.visualize import draw_boxes

NUM_SUMMARY_IMAGES = 4


def make_detect_fn(model, anchors, config):
    """tf.function: net input [B, S, S, 3] -> post-processed detection dict (model/postprocess.py)."""
    anchors = tf.constant(anchors)

    @tf.function
    def detect(features):
        outputs = model(features, training=False)
        return postprocess.postprocess(outputs[fields.CLS_LOGITS], outputs[fields.BOX_CODES], anchors,
                                       config)
    return detect


def run_detection(model, data_dir, config, anchors, class_names, batch_size, split="val",
                  keep_images=0):
    """Detections for every image of `split` in a DetectionEvaluator; also up to `keep_images` inputs."""
    detect = make_detect_fn(model, anchors, config)
    evaluator = DetectionEvaluator(class_names)
    kept = []
    start, count = time.time(), 0
    for features, labels in inputs.eval_input_fn(data_dir, config, batch_size, split):
        detections = {k: v.numpy() for k, v in detect(features).items()}
        labels = {k: v.numpy() for k, v in labels.items()}
        for i in range(features.shape[0]):
            n = int(detections[fields.NUM_DETECTIONS][i])
            valid = labels[fields.LABELS][i] > 0  # padding rows have label 0
            evaluator.add(labels[fields.IMAGE_ID][i].decode(), int(labels[fields.HEIGHT][i]),
                          int(labels[fields.WIDTH][i]), labels[fields.BOXES][i][valid],
                          labels[fields.LABELS][i][valid], labels[fields.DIFFICULT][i][valid],
                          detections[fields.DETECTION_BOXES][i][:n],
                          detections[fields.DETECTION_SCORES][i][:n],
                          detections[fields.DETECTION_CLASSES][i][:n])
            if len(kept) < keep_images:
                kept.append((features[i].numpy(), {k: v[i][:n] for k, v in detections.items()
                                                   if k != fields.NUM_DETECTIONS}))
        count += features.shape[0]
        logging.log_every_n_seconds(logging.INFO, "evaluated %d images (%.1f images/s)", 10, count,
                                    count / max(time.time() - start, 1e-9))
    return evaluator, kept


def headline(results):
    """One line: the mAPs that were computed."""
    parts = []
    for metric in ("voc07", "voc12"):
        if metric in results and results[metric]["mAP"] is not None:
            parts.append(f"{metric} mAP {results[metric]['mAP']:.4f}")
    if "coco" in results and results["coco"]["AP"] is not None:
        parts.append(f"COCO AP {results['coco']['AP']:.4f}")
    return ", ".join(parts) + f" ({results['num_images']} images)"


def write_summaries(writer, step, results, kept, config, class_names, min_score=0.3):
    """Every metric, per-class AP, and a few images with detections drawn."""
    for metric in ("voc07", "voc12"):
        if metric in results:
            writer.scalars(step, {"mAP": results[metric]["mAP"] or 0.0}, prefix=f"{metric}/")
            writer.scalars(step, {name: ap for name, ap in results[metric]["AP"].items() if ap is not None},
                           prefix=f"{metric}_AP/")
    if "coco" in results:
        writer.scalars(step, {k: v for k, v in results["coco"].items() if v is not None}, prefix="coco/")
    drawn = []
    for features, det in kept:
        keep = det[fields.DETECTION_SCORES] >= min_score
        image = summaries.net_input_to_uint8(features[None], config)[0]
        drawn.append(draw_boxes(image, det[fields.DETECTION_BOXES][keep],
                                det[fields.DETECTION_CLASSES][keep], class_names,
                                scores=det[fields.DETECTION_SCORES][keep]))
    writer.images(step, "eval/detections", drawn)


def evaluate(model, data_dir, config, anchors, class_names, batch_size, summary_dir=None, step=0,
             metrics=METRIC_NAMES, output_dir=None, split="val"):
    """Evaluates `model` on `split`; logs the per-class table; optionally writes summaries and result
    files. Returns the evaluator's result dict."""
    evaluator, kept = run_detection(model, data_dir, config, anchors, class_names, batch_size, split,
                                    keep_images=NUM_SUMMARY_IMAGES if summary_dir else 0)
    results = evaluator.evaluate(metrics)
    logging.info("step %d evaluation:\n%s", step, evaluator.format_table(results))
    if output_dir:
        for path in evaluator.write_results(output_dir):
            logging.info("wrote %s", path)
    if summary_dir:
        writer = summaries.Writer(summary_dir)
        write_summaries(writer, step, results, kept, config, class_names)
        writer.close()
    return results

