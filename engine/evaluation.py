"""Evaluating a model on the val shards: eval input -> forward -> post-processing -> metrics.

Shared by eval_ssd.py and train_ssd.py's in-process evaluation. Every val image is seen exactly once
(eval_input_fn keeps the last, smaller batch; the evaluator rejects a repeated id). Detections stay
normalized: the evaluator scales them to each image's original size at the edge.

Continuous evaluation (eval_ssd.py --wait_for_checkpoints) walks a model_dir's checkpoints with
engine.checkpoints.watch_checkpoints.
"""

import time

import tensorflow as tf
from absl import logging

from dataset import coco, fields, reader
from engine import drawing, inference, summaries
from metrics.evaluator import METRIC_NAMES, DetectionEvaluator
from preprocessing import inputs

NUM_SUMMARY_IMAGES = 4


def make_detect_fn(model, anchors, config):
    """engine/inference.detect as one tf.function (traced once, reused across checkpoints): net input
    [B, S, S, 3] (RGB 0-255, uint8 or float) -> the padded post-processed detection dict."""
    anchors = tf.constant(anchors)
    return tf.function(lambda features: inference.detect(model, features, anchors, config))


def add_batch(evaluator, labels, detections):
    """Adds one eval batch to `evaluator`.

    Args:
      labels: numpy dict from eval_input_fn: image_id [B] bytes, height [B], width [B], boxes [B, G, 4],
        labels [B, G] (0 in padding rows), difficult [B, G].
      detections: numpy dict from post-processing: detection_boxes [B, K, 4], detection_scores [B, K],
        detection_classes [B, K], num_detections [B].
    """
    for i in range(len(labels[fields.IMAGE_ID])):
        n = int(detections[fields.NUM_DETECTIONS][i])
        valid = labels[fields.LABELS][i] > fields.BACKGROUND_CLASS  # padding rows have label 0 (background)
        optional = {name: labels[key][i][valid] for name, key in (("gt_is_crowd", fields.IS_CROWD),
                                                                  ("gt_area", fields.AREA))
                    if key in labels}
        evaluator.add(labels[fields.IMAGE_ID][i].decode(), int(labels[fields.HEIGHT][i]),
                      int(labels[fields.WIDTH][i]), labels[fields.BOXES][i][valid],
                      labels[fields.LABELS][i][valid], labels[fields.DIFFICULT][i][valid],
                      detections[fields.DETECTION_BOXES][i][:n],
                      detections[fields.DETECTION_SCORES][i][:n],
                      detections[fields.DETECTION_CLASSES][i][:n], **optional)


def progress_line(count, total, elapsed_s):
    """'evaluated 40/80 images, 8.0 images/s, ETA 0:00:05' (total None: no ETA)."""
    rate = count / max(elapsed_s, 1e-9)
    if not total:
        return f"evaluated {count} images, {rate:.1f} images/s"
    eta = int(round((total - count) / max(rate, 1e-9)))
    return (f"evaluated {count}/{total} images, {rate:.1f} images/s, "
            f"ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}")


def run_detection(detect, dataset, class_names, keep_images=0, total=None, category_map=None):
    """Detections for every image of `dataset` (eval_input_fn batches) in a DetectionEvaluator
    (for COCO records, with their `category_map`),
    logging progress with rate and ETA (against `total` images) every 10 s.

    Returns (evaluator, kept): kept is up to `keep_images` (net input uint8 [S, S, 3], detection dict
    trimmed to the valid detections) pairs, for summaries.
    """
    evaluator = DetectionEvaluator(class_names, category_map)
    kept = []
    start, count = time.time(), 0
    for features, labels in dataset:
        detections = {k: v.numpy() for k, v in detect(features).items()}
        add_batch(evaluator, {k: v.numpy() for k, v in labels.items()}, detections)
        for i in range(min(keep_images - len(kept), features.shape[0])):
            n = int(detections[fields.NUM_DETECTIONS][i])
            kept.append((features[i].numpy(), {k: v[i][:n] for k, v in detections.items()
                                               if k != fields.NUM_DETECTIONS}))
        count += features.shape[0]
        logging.log_every_n_seconds(logging.INFO, "%s", 10, progress_line(count, total, time.time() - start))
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


def flatten_numbers(results, prefix=""):
    """Nested result dict -> {"voc07/mAP": x, "voc07/AP/cat": y, "coco/AP50": z, ...}; None is skipped."""
    flat = {}
    for key, value in results.items():
        name = prefix + str(key)
        if isinstance(value, dict):
            flat.update(flatten_numbers(value, name + "/"))
        elif value is not None:
            flat[name] = float(value)
    return flat


def write_summaries(writer, step, results, kept, config, class_names, min_score=drawing.MIN_DRAWN_SCORE):
    """Every number of `results` (flattened, undefined APs skipped) and `kept` images with detections."""
    writer.scalars(step, flatten_numbers(results))
    drawn = []
    for features, det in kept:
        image = summaries.net_input_to_uint8(features[None])[0]
        drawn.append(drawing.draw_detections(image, det[fields.DETECTION_BOXES],
                                               det[fields.DETECTION_SCORES],
                                               det[fields.DETECTION_CLASSES], class_names, min_score))
    writer.images(step, "eval/detections", drawn)


def evaluate(model, data_dir, config, anchors, class_names, batch_size, summary_dir=None, step=0,
             metrics=METRIC_NAMES, output_dir=None, split="val", detect=None, annotations_file=None,
             analyze=None):
    """Evaluates `model` on every image of `split` once; optionally writes summaries (to `summary_dir`,
    at `step`) and result files (to `output_dir`). Printing is the caller's (metrics.evaluator.format_table).

    COCO records (a coco_category_map.json in `data_dir`) are scored with their original image and
    category ids, areas and crowd flags; `annotations_file` (an official instances JSON) replaces
    the records' ground truth in the COCO numbers.

    `detect` (from make_detect_fn) can be passed to reuse one traced function across checkpoints.
    `analyze` (the model doctor's hook, eval_ssd.py --analysis_dir): called with the filled evaluator;
    what it returns goes into the results as "analysis".
    Returns the evaluator's result dict (metrics/evaluator.py).
    """
    detect = detect or make_detect_fn(model, anchors, config)
    # Counted from the record headers (no decoding): the ETA's denominator.
    total = sum(reader.count_records(f) for f in reader.shard_files(data_dir, split))
    evaluator, kept = run_detection(detect, inputs.eval_input_fn(data_dir, config, batch_size, split),
                                    class_names, keep_images=NUM_SUMMARY_IMAGES if summary_dir else 0,
                                    total=total, category_map=coco.find_category_map(data_dir))
    results = evaluator.evaluate(metrics, annotations_file=annotations_file)
    if output_dir:
        for path in evaluator.write_results(output_dir):
            logging.info("wrote %s", path)
    if summary_dir:
        writer = summaries.Writer(summary_dir)
        write_summaries(writer, step, results, kept, config, class_names)
        writer.close()
    if analyze is not None:  # after the scalars: its numbers are not all scalars
        results["analysis"] = analyze(evaluator)
    return results
