"""Detect objects in image files with a trained SSD: boxes drawn on copies, and one detections.json.

    python3 detect_ssd.py --model_dir logs/ --input photos/,extra/*.jpg --output_dir detected/
    python3 detect_ssd.py --saved_model_dir exported/ssd300 --input cat.png --output_dir detected/

Any image size: the model warps each image to S x S inside (engine/serving.py), so the checkpoint and
the SavedModel give the same detections. Writes `<stem>_detections.<png|jpg>` per image and
detections.json:

    [{"file": path, "width": W, "height": H,
      "detections": [{"class_id": 1..C, "class_name": str, "score": float,
                      "box": [ymin, xmin, ymax, xmax] normalized,
                      "box_pixels": [xmin, ymin, xmax, ymax] VOC 1-based inclusive pixels}, ...]}, ...]

A file that cannot be read or decoded is named in an error line, skipped and counted; the exit status is
1 when any was skipped.
"""

import glob
import json
import os
import sys
import time

import numpy as np
from absl import flags, logging

from engine import cli

flags.DEFINE_list("input", None, "Image files, directories (their images) or globs, comma-separated.")
flags.DEFINE_string("output_dir", None, "Folder for the drawn images and detections.json.")
flags.DEFINE_string("model_dir", "logs/", "Training model_dir; its latest checkpoint is used.")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix (ckpt-N) instead of the latest.")
flags.DEFINE_string("saved_model_dir", None, "An export of export_saved_model.py, instead of a checkpoint.")
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


def detection_records(detections, class_names, width, height, score_threshold):
    """One image's detections (numpy, batch row already taken) -> json-ready dicts scoring >= threshold."""
    from dataset import fields
    from dataset.voc_boxes import normalized_to_voc_pixels

    count = int(detections[fields.NUM_DETECTIONS])
    scores = detections[fields.DETECTION_SCORES][:count]
    keep = scores >= score_threshold
    boxes = detections[fields.DETECTION_BOXES][:count][keep]
    classes = detections[fields.DETECTION_CLASSES][:count][keep].astype(np.int64)
    pixels = normalized_to_voc_pixels(boxes, width, height)
    return [{"class_id": int(c), "class_name": class_names[c - 1], "score": float(s),
             "box": [float(v) for v in box], "box_pixels": [float(v) for v in pixel_box]}
            for c, s, box, pixel_box in zip(classes, scores[keep], boxes, pixels)]


def _output_path(output_dir, path, extension, used):
    stem = os.path.splitext(os.path.basename(path))[0] + "_detections"
    name, n = stem, 1
    while name in used:  # same file name from two input folders
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return os.path.join(output_dir, f"{name}.{extension}")


def detect_files(paths, detect_fn, class_names, output_dir, score_threshold, output_format="png"):
    """Runs `detect_fn` (uint8 [1, H, W, 3] -> serving output dict) on every file of `paths`.

    Returns (records for detections.json, number of skipped files). Writes drawn images and
    detections.json into `output_dir`.
    """
    import tensorflow as tf
    from PIL import Image

    from dataset.atomic import write_atomically
    from engine import serving
    from engine.drawing import draw_boxes

    os.makedirs(output_dir, exist_ok=True)
    records, skipped, used = [], 0, set()
    start = last_log = time.time()
    for index, path in enumerate(paths):
        try:
            with open(path, "rb") as f:
                image = serving.decode_image(tf.constant(f.read())).numpy()
        except (OSError, tf.errors.InvalidArgumentError) as e:
            reason = getattr(e, "message", None) or str(e)
            logging.error("skipping %s: cannot read it as an image (%s)", path,
                          reason.split("}} ")[-1])  # drop TF's "{{function_node ...}}" prefix
            skipped += 1
            continue
        height, width = image.shape[:2]
        outputs = {k: v.numpy()[0] for k, v in detect_fn(tf.constant(image[None])).items()}
        found = detection_records(outputs, class_names, width, height, score_threshold)
        drawn = draw_boxes(image, [d["box"] for d in found], [d["class_id"] for d in found], class_names,
                           scores=[d["score"] for d in found])
        Image.fromarray(drawn).save(_output_path(output_dir, path, output_format, used))
        records.append({"file": path, "width": int(width), "height": int(height), "detections": found})
        if time.time() - last_log > _PROGRESS_SECONDS:
            last_log = time.time()
            logging.info("%d/%d images (%.2f images/s)", index + 1, len(paths),
                         (index + 1) / (last_log - start))
    write_atomically(os.path.join(output_dir, DETECTIONS_FILENAME), json.dumps(records, indent=1))
    return records, skipped


def make_detect_fn(saved_model_dir=None, model_dir=None, checkpoint_path=None):
    """(detect_fn uint8 [B, H, W, 3] -> output dict, class_names, the model loaded, for logging)."""
    from engine import serving

    if saved_model_dir:
        loaded, _, class_names = serving.load(saved_model_dir)

        def detect(images):
            # Looking the signature up through `loaded` keeps it (and its variables) alive.
            return loaded.signatures[serving.SERVING_DEFAULT](**{serving.IMAGES_INPUT: images})
        return detect, class_names, saved_model_dir
    module, _, class_names, checkpoint = serving.from_checkpoint(model_dir, checkpoint_path)

    def detect(images):
        # A tf.function method holds its module weakly; this closure holds it strongly.
        return module.serve_images(images)
    return detect, class_names, checkpoint


def main(argv):
    del argv
    paths = expand_inputs(FLAGS.input)  # before loading the model: a typo fails at once
    detect_fn, class_names, source = make_detect_fn(FLAGS.saved_model_dir, FLAGS.model_dir,
                                                    FLAGS.checkpoint_path)
    logging.info("detecting in %d files with %s", len(paths), source)
    records, skipped = detect_files(paths, detect_fn, class_names, FLAGS.output_dir, FLAGS.score_threshold,
                                    FLAGS.output_format)
    total = sum(len(r["detections"]) for r in records)
    logging.info("%d images, %d detections >= %.2f, written to %s; %d files skipped", len(records), total,
                 FLAGS.score_threshold, FLAGS.output_dir, skipped)
    if skipped:
        sys.exit(1)


if __name__ == "__main__":
    # Marked here, not at import: tests import this module beside other scripts sharing absl's FLAGS.
    flags.mark_flags_as_required(["input", "output_dir"])
    cli.run(main)
