"""Evaluate SSD checkpoints: VOC07 11-point, VOC2010+ all-point and COCO metrics on the val shards.

    python3 eval_ssd.py --model_dir logs/                          # the latest checkpoint, once
    python3 eval_ssd.py --model_dir logs/ --wait_for_checkpoints   # every checkpoint as it appears
    python3 eval_ssd.py --checkpoint_path logs/ckpt-120000 --metrics voc07

The model config and class names come from the checkpoint's model_dir (config.json, label_map.pbtxt,
written by train_ssd.py); the data's label map must name the same classes in the same order. Every
image of --split is evaluated exactly once, with boxes scaled to its original size. Per checkpoint:
the per-class table and then one JSON object with every number go to stdout (the JSON is always the
last line), TensorBoard summaries to <model_dir>/eval, and VOC devkit comp4 files plus a COCO
results JSON to --output_dir (default <model_dir>/eval_results/<checkpoint name>).

COCO records (convert_coco_tfrecords.py; --metrics coco): COCO AP by pycocotools with the records'
annotation areas and crowd flags, and a results JSON with the original image and category ids, ready
to submit. With --annotations_file instances_val2017.json the COCO numbers are scored against that
official file itself (the evaluated images only).

    python3 eval_ssd.py --model_dir logs/coco --data_dir ~/coco_tfrecords --metrics coco \
        --annotations_file ~/coco/annotations/instances_val2017.json

The model doctor (--analysis_dir DIR; docs/model_doctor.md): where the AP goes. PR curves with
best-F1 thresholds, the confusion matrix, the TIDE error breakdown, AP by size and aspect, the worst
images, a summary PNG and report.txt (its first lines say the largest error kind in words), with every
number also in the final JSON line under "analysis". Detections from a checkpoint (as above), from any
model the one detector door opens (--model: SavedModel, .tflite, model_dir or checkpoint), or from a COCO
results JSON (--results_file) against the records or, with --annotations_file, against that file alone:

    python3 eval_ssd.py --model_dir logs/sample --analysis_dir doctor/
    python3 eval_ssd.py --model exported/ssd300 --analysis_dir doctor/
    python3 eval_ssd.py --results_file logs/sample/eval_results/ckpt-2/coco_detections.json --analysis_dir doctor/
"""

import functools
import json
import os

from absl import flags, logging

from engine import cli

from metrics.evaluator import METRIC_NAMES as METRICS  # no TensorFlow: --help stays fast
flags.DEFINE_string("data_dir", cli.DEFAULT_DATA_DIR, "Directory of val-* shards and label_map.pbtxt "
                    "(default: the converter's output).")
flags.DEFINE_string("model_dir", "logs/", "Training model_dir: checkpoints, config.json, label_map.pbtxt.")
flags.DEFINE_string("checkpoint_path", "", "A checkpoint prefix (e.g. logs/ckpt-1000); default: the "
                    "latest in --model_dir.")
flags.DEFINE_string("split", "val", "Shards <split>-?????-of-????? of --data_dir to evaluate.")
flags.DEFINE_list("metrics", list(METRICS), "Metrics: voc07 (11-point), voc12 "
                  "(VOC2010+ all-point), coco (pycocotools).")
flags.DEFINE_string("annotations_file", "", "COCO records only: an official instances JSON (e.g. "
                    "annotations/instances_val2017.json) to score the COCO numbers against, instead of "
                    "the records' own ground truth.")
flags.DEFINE_integer("batch_size", 16, "Images per forward call (the last batch may be smaller).")
flags.DEFINE_string("output_dir", "", "Result files (VOC comp4 per class, COCO JSON); default "
                    "<model_dir>/eval_results/<checkpoint name>.")
flags.DEFINE_bool("write_results", True, "Write the result files.")
flags.DEFINE_bool("write_summaries", True, "Write TensorBoard summaries to <model_dir>/eval.")
flags.DEFINE_bool("wait_for_checkpoints", False, "Evaluate every checkpoint of --model_dir, oldest "
                  "first, waiting for new ones until --eval_timeout or --max_steps.")
flags.DEFINE_integer("eval_timeout", 3600, "Stop waiting after this many seconds without a new checkpoint.")
flags.DEFINE_integer("max_steps", 0, "With --wait_for_checkpoints: stop after the checkpoint at or past "
                     "this step; 0: never.")
flags.DEFINE_string("analysis_dir", "", "Write the model doctor's report, PNGs and TensorBoard data here "
                    "(one folder per checkpoint with --wait_for_checkpoints); empty: no analysis.")
flags.DEFINE_float("analysis_score_threshold", 0.3, "Model doctor: the score threshold of the confusion "
                   "matrix and the worst images.")
flags.DEFINE_float("analysis_iou", 0.5, "Model doctor: the IoU threshold of the confusion matrix.")
flags.DEFINE_integer("analysis_worst_images", 16, "Model doctor: images on the worst-images sheet.")
flags.DEFINE_string("model", "", "Evaluate this model instead of a checkpoint of --model_dir: anything "
                    "engine.serving.load_detector opens (SavedModel folder, .tflite file, model_dir, "
                    "checkpoint prefix), on the original images of --split.")
flags.DEFINE_string("results_file", "", "Evaluate this COCO results JSON instead of a model: against the "
                    "records of --data_dir (VOC records: image_id_map.json beside it), or with "
                    "--annotations_file against that instances JSON alone.")
FLAGS = flags.FLAGS
cli.positive("batch_size")
cli.positive("analysis_worst_images")
flags.register_validator("analysis_score_threshold", lambda v: 0 <= v <= 1,
                         message="--analysis_score_threshold must be in [0, 1]")
flags.register_validator("analysis_iou", lambda v: 0 < v <= 1, message="--analysis_iou must be in (0, 1]")
flags.register_validator("metrics", lambda names: bool(names) and set(names) <= set(METRICS),
                         message=f"--metrics takes a comma-separated subset of {', '.join(METRICS)}")
flags.register_validator("eval_timeout", lambda v: v >= 0, message="--eval_timeout must be >= 0")
flags.register_multi_flags_validator(
    ["data_dir", "results_file", "annotations_file"],
    lambda f: (f["results_file"] and f["annotations_file"]) or os.path.isfile(
        os.path.join(f["data_dir"], "label_map.pbtxt")),
    message="--data_dir holds no label_map.pbtxt: convert a dataset first "
            "(python3 convert_voc_sample_tfrecords.py) or point --data_dir at one")
flags.register_multi_flags_validator(
    ["model", "results_file", "wait_for_checkpoints"],
    lambda f: not (f["model"] and f["results_file"]) and not (
        (f["model"] or f["results_file"]) and f["wait_for_checkpoints"]),
    message="--model, --results_file and --wait_for_checkpoints exclude each other")


def _doctor(analysis_dir, evaluator, source, summary_dir=None, step=0, with_images=True):
    """The model doctor on a filled evaluator; returns its numbers and prints the report's first lines."""
    from apps.doctor import model_doctor

    images_fn = functools.partial(model_doctor.record_images, FLAGS.data_dir, FLAGS.split) if with_images else None
    numbers, lines = model_doctor.run(analysis_dir, evaluator, source, FLAGS.analysis_score_threshold,
                                      FLAGS.analysis_iou, FLAGS.analysis_worst_images, images_fn,
                                      summary_dir, step)
    logging.info("model doctor: %s (numbers in %.2f s)", analysis_dir, numbers["analysis_seconds"])
    print("\n".join(lines[:3]))
    print(f"model doctor: {numbers['files']['summary']}, {numbers['files']['report']}")
    return numbers


def evaluate_source():
    """--model or --results_file: one evaluation of those detections, then the doctor when asked."""
    from apps.doctor import model_doctor
    from engine import serving
    from metrics.evaluator import format_table

    against_file = bool(FLAGS.results_file and FLAGS.annotations_file)
    if FLAGS.model:
        source = FLAGS.model
        evaluator = model_doctor.evaluator_from_detector(serving.load_detector(FLAGS.model), FLAGS.data_dir,
                                                         FLAGS.split)
    else:
        source = FLAGS.results_file
        evaluator = model_doctor.evaluator_from_results(
            FLAGS.results_file, None if against_file else FLAGS.data_dir, FLAGS.split,
            FLAGS.annotations_file or None)
    results = evaluator.evaluate(FLAGS.metrics, annotations_file=None if against_file or not FLAGS.model
                                 else FLAGS.annotations_file or None)
    if FLAGS.output_dir and FLAGS.write_results:
        for path in evaluator.write_results(FLAGS.output_dir):
            logging.info("wrote %s", path)
    if FLAGS.analysis_dir:
        results["analysis"] = _doctor(FLAGS.analysis_dir, evaluator, source, with_images=not against_file)
    print(f"{source}:")
    print(format_table(results, evaluator.class_names))
    print(json.dumps({"model" if FLAGS.model else "results_file": source, **results}), flush=True)


def main(argv):
    del argv
    if FLAGS.annotations_file and not os.path.isfile(FLAGS.annotations_file):
        raise FileNotFoundError(f"--annotations_file {FLAGS.annotations_file}: file not found")
    if FLAGS.results_file and not os.path.isfile(FLAGS.results_file):
        raise FileNotFoundError(f"--results_file {FLAGS.results_file}: file not found")
    if FLAGS.model or FLAGS.results_file:
        return evaluate_source()
    from dataset import coco, label_map
    from metrics.evaluator import format_table, load_official_ground_truth
    from engine import checkpoints, evaluation
    from model import anchors as anchors_lib
    from nets import ssd

    if FLAGS.annotations_file:  # checked once up front: a wrong file fails (ValueError) before the forward
        load_official_ground_truth(FLAGS.annotations_file, coco.find_category_map(FLAGS.data_dir))
    if FLAGS.wait_for_checkpoints:
        paths = checkpoints.watch_checkpoints(FLAGS.model_dir, FLAGS.eval_timeout, FLAGS.max_steps)
    else:
        paths = [checkpoints.resolve_checkpoint(FLAGS.model_dir, FLAGS.checkpoint_path)]

    model = None
    for checkpoint_path in paths:
        folder = os.path.dirname(checkpoint_path)
        if model is None:  # built at the first checkpoint: a watched model_dir may start empty
            config, class_names = checkpoints.read(folder)
            data_label_map = os.path.join(FLAGS.data_dir, label_map.LABEL_MAP_FILENAME)
            if not os.path.exists(data_label_map):
                raise FileNotFoundError(f"{data_label_map} not found: --data_dir holds no label map")
            checkpoints.check_label_maps(class_names, label_map.read_label_map(data_label_map), folder,
                                        data_label_map)
            model = ssd.build(config)
            anchors = anchors_lib.generate(config)
            detect = evaluation.make_detect_fn(model, anchors, config)
        checkpoints.restore_model(model, checkpoint_path)
        step = checkpoints.checkpoint_step(checkpoint_path)
        output_dir = None
        if FLAGS.write_results:
            output_dir = FLAGS.output_dir or os.path.join(folder, "eval_results",
                                                          os.path.basename(checkpoint_path))
        summary_dir = os.path.join(folder, "eval") if FLAGS.write_summaries else None
        analyze = None
        if FLAGS.analysis_dir:
            analysis_dir = (os.path.join(FLAGS.analysis_dir, os.path.basename(checkpoint_path))
                            if FLAGS.wait_for_checkpoints else FLAGS.analysis_dir)
            analyze = functools.partial(_doctor, analysis_dir, source=checkpoint_path,
                                        summary_dir=summary_dir, step=step)
        results = evaluation.evaluate(
            model, FLAGS.data_dir, config, anchors, class_names, FLAGS.batch_size,
            summary_dir=summary_dir, step=step, metrics=FLAGS.metrics, output_dir=output_dir,
            split=FLAGS.split, detect=detect, annotations_file=FLAGS.annotations_file or None,
            analyze=analyze)
        logging.info("%s (step %d): %s", checkpoint_path, step, evaluation.headline(results))
        print(f"{checkpoint_path} (step {step}):")
        print(format_table(results, class_names))
        # The last stdout line: every number, for scripts and tests.
        print(json.dumps({"checkpoint": checkpoint_path, "step": step, **results}), flush=True)
    if model is None:
        logging.warning("no checkpoint appeared in %s within %d s", FLAGS.model_dir, FLAGS.eval_timeout)


if __name__ == "__main__":
    cli.run(main)
