"""Write augmented training examples with their boxes drawn: PNG files plus TensorBoard images.

The examples come from preprocessing.inputs.augmented_examples, the training input path stopped before
mean subtraction and target encoding, so what is drawn is what the model trains on (same seed, same
order as train_input_fn). Boxes are the augmented ground truth, captioned with class names.

    python3 visualize_augmentation.py --data_dir dataset/tfrecords --num_samples 16 \
        --output_dir /tmp/augmented --seed 0
    tensorboard --logdir /tmp/augmented/tensorboard

Writes output_dir/augmented_00000.png ... and an events file under output_dir/tensorboard.
"""

import os

from absl import flags, logging

from engine import cli
from model import presets

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", cli.DEFAULT_DATA_DIR, "Directory of the shards and label_map.pbtxt "
                    "(default: the converter's output).")
flags.DEFINE_string("split", "train", "Shard prefix to read (train-?????-of-?????).")
flags.DEFINE_integer("num_samples", 16, "Augmented examples to write.")
flags.DEFINE_string("output_dir", "/tmp/augmented", "PNG files here, TensorBoard events in tensorboard/.")
flags.DEFINE_integer("seed", 0, "Augmentation and shuffle seed (train_ssd.py's --seed gives the same examples).")
flags.DEFINE_enum("model", "ssd300_vgg16", presets.NAMES, "Preset: sets the image size.")


cli.positive("num_samples")
flags.register_validator("data_dir", lambda d: os.path.isfile(os.path.join(d, "label_map.pbtxt")),
                         message="--data_dir holds no label_map.pbtxt: convert a dataset first "
                                 "(python3 convert_voc_sample_tfrecords.py) or point --data_dir at one")


def main(argv):
    del argv
    from engine.drawing import write_augmented_samples
    paths = write_augmented_samples(FLAGS.data_dir, FLAGS.split, FLAGS.num_samples, FLAGS.output_dir,
                                    FLAGS.seed, FLAGS.model)
    logging.info("wrote %d PNG files and TensorBoard images to %s", len(paths), FLAGS.output_dir)


if __name__ == "__main__":
    cli.run(main)
