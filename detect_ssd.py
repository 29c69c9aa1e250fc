"""Detect objects with a trained SSD in image files or a record split: boxes drawn on copies, one
detections.json, and optionally every drawn image in TensorBoard.

    python3 detect_ssd.py --model_dir logs/ --input photos/,extra/*.jpg --output_dir detected/
    python3 detect_ssd.py --saved_model_dir exported/ssd300 --input cat.png --output_dir detected/
    python3 detect_ssd.py --tflite_path exported/tflite/model_int8.tflite --input cat.png --output_dir detected/
    python3 detect_ssd.py --model exported/onnx/model_float32.onnx --input cat.png --output_dir detected/
    python3 detect_ssd.py --model_dir logs/ --data_dir dataset/tfrecords --split val --max_images 8 \
        --output_dir detected/ --tensorboard_dir detected/tensorboard

Any image size: every model kind warps each image to S x S inside (engine/serving.py,
engine/tflite_export.py), so a checkpoint, its SavedModel and its float32 TFLite file give the same
detections. Writes `<stem>_detections.<png|jpg>` per image (at most the top 20 detections at or above
--score_threshold drawn, in their class colours; with --data_dir the ground truth in white beneath) and
detections.json, which lists every detection at or above the threshold (the per-image record is
engine.serving.detections_record's, with "file" and, for a split, "ground_truth" added):

    [{"file": path or record filename, "width": W, "height": H,
      "detections": [{"class_id": 1..C, "class_name": str, "score": float,
                      "box": [ymin, xmin, ymax, xmax] normalized,
                      "box_pixels": [xmin, ymin, xmax, ymax] VOC 1-based inclusive pixels}, ...],
      "ground_truth": [{"class_id", "class_name", "box", "difficult"}, ...]   (--data_dir only)}, ...]

--tensorboard_dir writes each drawn image as a TensorBoard image (tag detections/<stem>) whose
description gives the counts. A file that cannot be read, is no image, is truncated or is over the
converter's pixel cap (read from its header, before decoding) is named in one error line with the
problem, skipped and counted, and the rest are processed; the exit status is then 3
(engine/cli.EXIT_SKIPPED). EXIF rotations are applied, CMYK converted (engine.serving.read_image).
"""

import glob
import json
import os
import time

from absl import flags, logging

from engine import cli

flags.DEFINE_list("input", None, "Image files, directories (their images) or globs, comma-separated.")
flags.DEFINE_string("data_dir", None, "Instead of --input: record shards; --split's images with ground truth.")
flags.DEFINE_string("split", "val", "The record split read with --data_dir.")
flags.DEFINE_integer("max_images", 0, "With --data_dir: the first N records only; 0 for all.")
flags.DEFINE_string("output_dir", None, "Folder for the drawn images and detections.json.")
flags.DEFINE_string("model_dir", "logs/", "Training model_dir; its latest checkpoint is used.")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix (ckpt-N) instead of the latest.")
flags.DEFINE_string("saved_model_dir", None, "An export of export_saved_model.py, instead of a checkpoint.")
flags.DEFINE_string("tflite_path", None, "A .tflite file of export_tflite.py, instead of a checkpoint.")
flags.DEFINE_string("model", None, "Any model the detector door opens (engine.serving.load_detector), instead of "
                    "a checkpoint: a SavedModel folder, a .tflite or .onnx file, a model_dir or a ckpt-N prefix.")
flags.DEFINE_string("tensorboard_dir", None, "Also write every drawn image as a TensorBoard image here.")
flags.DEFINE_float("score_threshold", 0.3, "Detections scoring below this are neither drawn nor listed.")
flags.DEFINE_enum("output_format", "png", ["png", "jpg"], "Format of the drawn images.")
FLAGS = flags.FLAGS
flags.register_validator("score_threshold", lambda v: 0 <= v <= 1, message="--score_threshold must be in [0, 1]")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
DETECTIONS_FILENAME = "detections.json"
_GLOB_CHARS = "*?["
_PROGRESS_SECONDS = 10


def expand_inputs(items):
    """Paths named by `items`: a directory gives its image files (sorted), a glob its matches (sorted),
    anything else itself (a missing file is kept, to be reported as unreadable).

    A glob matching nothing or a folder without images is a mistake (a typo, the wrong folder): ValueError.
    """
    paths = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item)
                           if name.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ValueError(f"--input folder {item} holds no {'/'.join(IMAGE_EXTENSIONS)} image")
            paths.extend(found)
        elif any(c in item for c in _GLOB_CHARS):
            matches = sorted(glob.glob(item))
            if not matches:
                raise ValueError(f"--input {item!r} matches no file (quote globs so the shell leaves them)")
            paths.extend(matches)
        else:
            paths.append(item)
    return paths


def _output_path(output_dir, path, extension, used):
    stem = os.path.splitext(os.path.basename(path))[0] + "_detections"
    name, n = stem, 1
    while name in used:  # same file name from two input folders
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return os.path.join(output_dir, f"{name}.{extension}")


class _Writer:
    """Drawn images to files (and TensorBoard); the detections.json records."""

    def __init__(self, detector, output_dir, score_threshold, output_format, tensorboard_dir):
        import tensorflow as tf

        os.makedirs(output_dir, exist_ok=True)
        self.detector, self.output_dir = detector, output_dir
        self.score_threshold, self.output_format = score_threshold, output_format
        self.summary = tf.summary.create_file_writer(tensorboard_dir) if tensorboard_dir else None
        self.records, self.used = [], set()

    def add(self, name, image, ground_truth=None):
        """Detects in uint8 [H, W, 3] `image`, draws, writes; ground_truth: (boxes, labels, difficult)."""
        import tensorflow as tf
        from PIL import Image

        from engine import drawing, serving

        class_names = self.detector.class_names
        height, width = image.shape[:2]
        record = {"file": name, **serving.detections_record(self.detector(image), class_names, height, width,
                                                            min_score=self.score_threshold)}
        found = record["detections"]
        drawn = image
        if ground_truth is not None:
            boxes, labels, difficult = ground_truth
            record["ground_truth"] = [
                {"class_id": int(c), "class_name": class_names[int(c) - 1], "box": [float(v) for v in box],
                 "difficult": bool(d)} for box, c, d in zip(boxes, labels, difficult)]
            drawn = drawing.draw_boxes(drawn, boxes, labels, class_names, color=drawing.GROUND_TRUTH_RGB)
        # `found` is sorted by score; draw_detections keeps its top MAX_DRAWN_DETECTIONS.
        drawn = drawing.draw_detections(drawn, [d["box"] for d in found], [d["score"] for d in found],
                                        [d["class_id"] for d in found], class_names, self.score_threshold)
        path = _output_path(self.output_dir, name, self.output_format, self.used)
        Image.fromarray(drawn).save(path)
        if self.summary is not None:
            shown = min(len(found), drawing.MAX_DRAWN_DETECTIONS)
            caption = (f"{name}: {len(found)} detections >= {self.score_threshold:.2f} "
                       f"({shown} drawn, colour per class)")
            if ground_truth is not None:
                caption += f", {len(record['ground_truth'])} ground-truth boxes (white)"
            tag = "detections/" + os.path.splitext(os.path.basename(path))[0][:-len("_detections")]
            with self.summary.as_default():
                tf.summary.image(tag, drawn[None], step=0, description=caption)
        self.records.append(record)

    def close(self):
        from dataset.atomic import write_atomically

        write_atomically(os.path.join(self.output_dir, DETECTIONS_FILENAME), json.dumps(self.records, indent=1))
        if self.summary is not None:
            self.summary.close()


def _log_progress(index, total, start, last_log):
    if time.time() - last_log > _PROGRESS_SECONDS:
        last_log = time.time()
        rate = (index + 1) / (last_log - start)
        logging.info("%d/%s images (%.2f images/s, ETA %s)", index + 1, total or "?", rate,
                     f"{(total - index - 1) / rate:.0f} s" if total else "?")
    return last_log


def detect_files(paths, detector, output_dir, score_threshold, output_format="png", tensorboard_dir=None):
    """Runs `detector` (engine.serving.Detector) on every file of `paths`.

    Returns (records for detections.json, number of skipped files). Writes drawn images and
    detections.json into `output_dir` (and TensorBoard images into `tensorboard_dir`).
    """
    from engine import serving

    writer = _Writer(detector, output_dir, score_threshold, output_format, tensorboard_dir)
    skipped = 0
    start = last_log = time.time()
    for index, path in enumerate(paths):
        try:
            with open(path, "rb") as f:
                image = serving.read_image(f.read())
        except OSError as e:
            logging.error("skipping %s: cannot read it (%s)", path, e.strerror or e)
            skipped += 1
            continue
        except serving.BadImage as e:
            logging.error("skipping %s: %s", path, e)
            skipped += 1
            continue
        writer.add(path, image)
        last_log = _log_progress(index, len(paths), start, last_log)
    writer.close()
    return writer.records, skipped


def detect_split(data_dir, split, detector, output_dir, score_threshold, output_format="png",
                 tensorboard_dir=None, max_images=0):
    """Like detect_files, on the decoded images of a record split, with their ground truth drawn
    (white) and listed. Returns the records."""
    from dataset import fields, label_map, reader
    from engine import checkpoints

    label_map_path = os.path.join(data_dir, label_map.LABEL_MAP_FILENAME)
    checkpoints.check_label_maps(detector.class_names, label_map.read_label_map(label_map_path), detector.path,
                                 label_map_path)
    examples = reader.read_split(data_dir, split)
    if max_images:
        examples = examples.take(max_images)
    writer = _Writer(detector, output_dir, score_threshold, output_format, tensorboard_dir)
    start = last_log = time.time()
    for index, example in enumerate(examples):
        example = {k: v.numpy() for k, v in example.items()}
        writer.add(example[fields.FILENAME].decode() or example[fields.IMAGE_ID].decode(), example[fields.IMAGE],
                   (example[fields.BOXES], example[fields.LABELS], example[fields.DIFFICULT]))
        last_log = _log_progress(index, max_images, start, last_log)
    writer.close()
    return writer.records


def main(argv):
    del argv
    if bool(FLAGS.input) == bool(FLAGS.data_dir):
        raise ValueError("give exactly one of --input (image files) and --data_dir (a record split)")
    if sum(bool(f) for f in (FLAGS.model, FLAGS.saved_model_dir, FLAGS.tflite_path)) > 1:
        raise ValueError("give at most one of --model, --saved_model_dir and --tflite_path")
    paths = expand_inputs(FLAGS.input) if FLAGS.input else None  # before loading the model: a typo fails at once
    from engine import serving

    # One door for every kind; the most specific flag wins (the model_dir has a default).
    detector = serving.load_detector(FLAGS.model or FLAGS.saved_model_dir or FLAGS.tflite_path or
                                     FLAGS.checkpoint_path or FLAGS.model_dir)
    skipped = 0
    if FLAGS.data_dir:
        logging.info("detecting in the %s split of %s with %s", FLAGS.split, FLAGS.data_dir, detector)
        records = detect_split(FLAGS.data_dir, FLAGS.split, detector, FLAGS.output_dir, FLAGS.score_threshold,
                               FLAGS.output_format, FLAGS.tensorboard_dir, FLAGS.max_images)
    else:
        logging.info("detecting in %d files with %s", len(paths), detector)
        records, skipped = detect_files(paths, detector, FLAGS.output_dir, FLAGS.score_threshold,
                                        FLAGS.output_format, FLAGS.tensorboard_dir)
    total = sum(len(r["detections"]) for r in records)
    logging.info("%d images, %d detections >= %.2f, written to %s; %d files skipped", len(records), total,
                 FLAGS.score_threshold, FLAGS.output_dir, skipped)
    return cli.EXIT_SKIPPED if skipped else cli.EXIT_OK


if __name__ == "__main__":
    # Marked here, not at import: tests import this module beside other scripts sharing absl's FLAGS.
    flags.mark_flags_as_required(["output_dir"])
    cli.run(main)
