"""Convert VOC-layout datasets (or, with no flags, the embedded sample) into TFRecord shards.

    python3 convert_voc_sample_tfrecords.py          # dataset/sample -> dataset/tfrecords/
    python3 convert_voc_sample_tfrecords.py --dataset_directory ~/data/VOCdevkit \\
        --train_splits VOC2007:trainval,VOC2012:trainval --validation_splits VOC2007:test \\
        --train_shards 16 --validation_shards 4 --output_directory ~/data/voc_tfrecords

A split is DIR or DIR:IMAGESET (ImageSets/Main/IMAGESET.txt; without it trainval.txt when present,
else every annotation); comma-separated splits are merged. Writes train-*-of-* and val-* shards and
label_map.pbtxt. Exits 3 (engine/cli.EXIT_SKIPPED) when any file was skipped, unless --allow_skips.
"""

import os

from absl import app, flags

from engine import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset_directory", os.path.join(cli.REPO_DIR, "dataset"),
                    "Folder holding the VOC-layout directories named by the splits.")
flags.DEFINE_string("output_directory", cli.DEFAULT_DATA_DIR,
                    "Where shards and label_map.pbtxt are written (train_ssd.py's default --data_dir). "
                    "Replaced as a whole: it must hold converter output only.")
flags.DEFINE_string("train_splits", "sample:train", "Comma-separated DIR or DIR:IMAGESET to merge.")
flags.DEFINE_string("validation_splits", "sample:val", "Comma-separated DIR or DIR:IMAGESET to merge.")
flags.DEFINE_integer("train_shards", 4, "Number of train shards.", lower_bound=1)
flags.DEFINE_integer("validation_shards", 2, "Number of validation shards.", lower_bound=1)
flags.DEFINE_integer("num_threads", 4, "Worker threads; each shard is written by one.", lower_bound=1)
flags.DEFINE_string("label_map", None, "Existing label_map.pbtxt fixing the classes and their ids; "
                    "default: the sorted union of class names in all converted splits.")
flags.DEFINE_bool("skip_unknown", False, "Drop objects whose class is not in --label_map "
                  "(default: stop with an error naming the file and class).")
flags.DEFINE_bool("allow_skips", False, "Exit 0 even when files were skipped.")

flags.register_validator("dataset_directory", os.path.isdir,
                         message="--dataset_directory is not a folder (the one holding the VOC-layout dirs)")
flags.register_validator("label_map", lambda path: path is None or os.path.isfile(path),
                         message="--label_map names no file")

TRAIN_SPLIT_NAME = "train"
VALIDATION_SPLIT_NAME = "val"


def main(argv):
    del argv
    from PIL import Image

    from dataset import convert, voc
    # Pillow's own bomb guard agrees with ours (it warns above the limit and raises above twice it).
    Image.MAX_IMAGE_PIXELS = voc.MAX_IMAGE_PIXELS
    splits, num_shards = {}, {}
    for name, spec, shards in ((TRAIN_SPLIT_NAME, FLAGS.train_splits, FLAGS.train_shards),
                               (VALIDATION_SPLIT_NAME, FLAGS.validation_splits,
                                FLAGS.validation_shards)):
        if spec:
            splits[name] = [convert.Split.parse(s) for s in spec.split(",") if s.strip()]
            num_shards[name] = shards
    if not splits:
        raise app.UsageError("no splits to convert: set --train_splits or --validation_splits")
    results, class_names = convert.convert(
        FLAGS.dataset_directory, FLAGS.output_directory, splits, num_shards,
        num_threads=FLAGS.num_threads, label_map_path=FLAGS.label_map,
        skip_unknown=FLAGS.skip_unknown)
    print("Wrote %s (%d classes)" % (FLAGS.output_directory, len(class_names)))
    print(convert.format_summary(results, class_names))
    skipped = sum(len(r.skipped) for r in results.values())
    if skipped and not FLAGS.allow_skips:
        print("%d files skipped: exiting with status %d (pass --allow_skips to accept)" % (skipped, cli.EXIT_SKIPPED))
        return cli.EXIT_SKIPPED
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
