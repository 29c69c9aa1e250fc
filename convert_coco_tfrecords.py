"""Convert COCO instances JSON + images (or, with no flags, the embedded sample) into TFRecord shards.

    python3 convert_coco_tfrecords.py            # dataset/sample (COCO JSON) -> dataset/coco_tfrecords/
    python3 convert_coco_tfrecords.py \\
        --train_annotations ~/coco/annotations/instances_train2017.json --train_images ~/coco/train2017 \\
        --validation_annotations ~/coco/annotations/instances_val2017.json --validation_images ~/coco/val2017 \\
        --train_shards 64 --validation_shards 8 --output_directory ~/coco_tfrecords

Writes train-*-of-* and val-* shards, label_map.pbtxt (the categories in increasing COCO id order as
ids 1..C) and coco_category_map.json (contiguous id <-> COCO category id, read by eval_ssd.py).
Leave one split's --*_annotations empty to convert only the other. Exits 1 when any entry was
skipped (unless --allow_skips) and 2 on a fatal problem (one line naming the file), having written
nothing.
"""

import os

from absl import app, flags
from PIL import Image

from dataset import make_sample, voc
from engine import cli

_HERE = os.path.dirname(os.path.abspath(__file__))
_SAMPLE = os.path.join(_HERE, "dataset", "sample")
_SAMPLE_JSON = os.path.join(_SAMPLE, make_sample.COCO_ANNOTATIONS_DIR, "instances_%s.json")
_SAMPLE_IMAGES = os.path.join(_SAMPLE, "JPEGImages")

FLAGS = flags.FLAGS
flags.DEFINE_string("train_annotations", _SAMPLE_JSON % "train", "Instances JSON of the train split "
                    "(e.g. annotations/instances_train2017.json); empty: no train split.")
flags.DEFINE_string("train_images", _SAMPLE_IMAGES, "Folder the train JSON's file_names are in.")
flags.DEFINE_string("validation_annotations", _SAMPLE_JSON % "val", "Instances JSON of the val split "
                    "(e.g. annotations/instances_val2017.json); empty: no val split.")
flags.DEFINE_string("validation_images", _SAMPLE_IMAGES, "Folder the val JSON's file_names are in.")
flags.DEFINE_string("output_directory", os.path.join(_HERE, "dataset", "coco_tfrecords"),
                    "Where shards, label_map.pbtxt and coco_category_map.json are written.")
flags.DEFINE_integer("train_shards", 4, "Number of train shards.", lower_bound=1)
flags.DEFINE_integer("validation_shards", 2, "Number of validation shards.", lower_bound=1)
flags.DEFINE_integer("num_threads", 4, "Worker threads; each shard is written by one.", lower_bound=1)
flags.DEFINE_bool("skip_unknown", False, "Drop annotations whose category_id is not in the JSON's "
                  "categories (default: stop with an error naming the first).")
flags.DEFINE_bool("keep_empty", True, "Keep images without annotations as negatives (COCO practice); "
                  "--nokeep_empty drops them, as the MLPerf SSD reference reads COCO (117,266 train2017 and "
                  "4,952 val2017 images).")
flags.DEFINE_bool("allow_skips", False, "Exit 0 even when entries were skipped.")
flags.DEFINE_integer("max_listed", 20, "Examples listed per kind of skip or repair in the summary.")

TRAIN_SPLIT_NAME = "train"
VALIDATION_SPLIT_NAME = "val"


def main(argv):
    del argv
    # Imported here: it loads TensorFlow (TFRecord writing), which --help does not need.
    from dataset import coco_convert
    Image.MAX_IMAGE_PIXELS = voc.MAX_IMAGE_PIXELS
    splits, num_shards = {}, {}
    for name, annotations, images, shards in (
            (TRAIN_SPLIT_NAME, FLAGS.train_annotations, FLAGS.train_images, FLAGS.train_shards),
            (VALIDATION_SPLIT_NAME, FLAGS.validation_annotations, FLAGS.validation_images,
             FLAGS.validation_shards)):
        if annotations:
            if not os.path.isdir(images):
                raise FileNotFoundError(f"{name} split: image folder {images} does not exist")
            splits[name] = coco_convert.CocoSplit(annotations, images)
            num_shards[name] = shards
    if not splits:
        raise app.UsageError("nothing to convert: set --train_annotations or --validation_annotations")
    # A file that is no instances file, an unknown or changed category: ValueError, one line (engine/cli.py).
    results, category_map = coco_convert.convert(
        splits, FLAGS.output_directory, num_shards, num_threads=FLAGS.num_threads,
        skip_unknown=FLAGS.skip_unknown, keep_empty=FLAGS.keep_empty)
    print("Wrote %s (%d classes)" % (FLAGS.output_directory, category_map.num_classes))
    print(coco_convert.format_summary(results, category_map, FLAGS.max_listed))
    skipped = sum(len(r.skipped) for r in results.values())
    if skipped and not FLAGS.allow_skips:
        print("%d entries skipped: exiting with status %d (pass --allow_skips to accept)" % (skipped, cli.EXIT_SKIPPED))
        return cli.EXIT_SKIPPED
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
