"""Convert a YOLO / Ultralytics dataset (data.yaml, images/, labels/) into TFRecord shards.

    python3 convert_yolo_tfrecords.py            # dataset/sample/yolo (the sample in YOLO layout)
    python3 convert_yolo_tfrecords.py --data_yaml ~/datasets/my_set/data.yaml \\
        --output_directory ~/my_set_tfrecords --train_shards 8 --validation_shards 2

Writes train-*-of-* and val-* shards (the data.yaml's train and val splits) and label_map.pbtxt (its
`names` in order, ids 1..C), the same records the VOC and COCO converters write. Every bad case is
listed in docs/datasets.md (YOLO-format datasets) and dataset/yolo.py. Exits 3 when any image or label
file was skipped (unless --allow_skips) and 2 on a fatal problem (one line naming the file), having
written nothing.
"""

import os

from absl import flags
from PIL import Image

from dataset import voc
from engine import cli

_HERE = os.path.dirname(os.path.abspath(__file__))

FLAGS = flags.FLAGS
flags.DEFINE_string("data_yaml", os.path.join(_HERE, "dataset", "sample", "yolo", "data.yaml"),
                    "The dataset's data.yaml (names, and train/val as image folders or .txt lists of images).")
flags.DEFINE_string("output_directory", cli.DEFAULT_DATA_DIR,
                    "Where shards and label_map.pbtxt are written (replaced whole).")
flags.DEFINE_integer("train_shards", 4, "Number of train shards.", lower_bound=1)
flags.DEFINE_integer("validation_shards", 2, "Number of validation shards.", lower_bound=1)
flags.DEFINE_integer("num_threads", 4, "Worker threads; each shard is written by one.", lower_bound=1)
flags.DEFINE_bool("skip_unknown", False, "Drop boxes whose class id is outside names (default: stop with an "
                  "error naming the first).")
flags.DEFINE_bool("allow_skips", False, "Exit 0 even when images or label files were skipped.")
flags.DEFINE_integer("max_listed", 20, "Examples listed per split for skips and for repairs in the summary.")
flags.register_validator("data_yaml", os.path.isfile,
                         message="--data_yaml: no such file (a YOLO dataset is described by its data.yaml)")


def main(argv):
    del argv
    # Imported here: it loads TensorFlow (TFRecord writing), which --help does not need.
    from dataset import yolo
    Image.MAX_IMAGE_PIXELS = voc.MAX_IMAGE_PIXELS
    data = yolo.read_data_yaml(FLAGS.data_yaml)
    num_shards = {"train": FLAGS.train_shards, "val": FLAGS.validation_shards}
    results = yolo.convert(data, FLAGS.output_directory, num_shards, num_threads=FLAGS.num_threads,
                           skip_unknown=FLAGS.skip_unknown)
    print("Wrote %s (%d classes)" % (FLAGS.output_directory, len(data.class_names)))
    print(yolo.format_summary(results, data.class_names, FLAGS.max_listed))
    skipped = sum(len(r.skipped) for r in results.values())
    if skipped and not FLAGS.allow_skips:
        print("%d entries skipped: exiting with status %d (pass --allow_skips to accept)" % (skipped, cli.EXIT_SKIPPED))
        return cli.EXIT_SKIPPED
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
