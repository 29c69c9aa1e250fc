"""Reading converted shards back: serialized tf.train.Example -> the example dict of dataset/fields.py.

    files = reader.shard_files("dataset/tfrecords", "train")
    ds = tf.data.TFRecordDataset(files).map(reader.parse_example)
    C = reader.num_classes("dataset/tfrecords/label_map.pbtxt")

Each element:

    image       uint8   [H, W, 3]  RGB, decoded exactly as Pillow decodes it (integer-accurate IDCT)
    boxes       float32 [N, 4]     [ymin, xmin, ymax, xmax] normalized to [0, 1]
    labels      int32   [N]        1..C, ids of label_map.pbtxt
    difficult   bool    [N]
    truncated   bool    [N]
    is_crowd    bool    [N]        False when the record has no image/object/is_crowd (older VOC records)
    area        float32 [N]        pixels; the box's area when the record has no image/object/area
    image_id    string  []
    filename    string  []
    height      int32   []
    width       int32   []

N may be 0 (an image without objects). The converter stores JPEG only (other formats are re-encoded).
"""

import glob
import os

import tensorflow as tf

from dataset import fields
from dataset.label_map import num_classes, read_label_map  # noqa: F401  (part of this API)

_FEATURES = {
    fields.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
    fields.IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    fields.IMAGE_SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    fields.IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    fields.IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
    fields.OBJECT_YMIN: tf.io.VarLenFeature(tf.float32),
    fields.OBJECT_XMIN: tf.io.VarLenFeature(tf.float32),
    fields.OBJECT_YMAX: tf.io.VarLenFeature(tf.float32),
    fields.OBJECT_XMAX: tf.io.VarLenFeature(tf.float32),
    fields.OBJECT_LABEL: tf.io.VarLenFeature(tf.int64),
    fields.OBJECT_DIFFICULT: tf.io.VarLenFeature(tf.int64),
    fields.OBJECT_TRUNCATED: tf.io.VarLenFeature(tf.int64),
    fields.OBJECT_IS_CROWD: tf.io.VarLenFeature(tf.int64),
    fields.OBJECT_AREA: tf.io.VarLenFeature(tf.float32),
}


def shard_files(data_dir, split):
    """Sorted paths of the shards `<split>-?????-of-?????` in `data_dir`; ValueError when none."""
    files = sorted(glob.glob(os.path.join(data_dir, "%s-?????-of-?????" % split)))
    if not files:
        raise ValueError("no %s shards (%s-?????-of-?????) in %s" % (split, split, data_dir))
    return files


def _dense(sparse):
    return tf.sparse.to_dense(sparse)


def _per_object_or(values, default):
    """`values` [N] when the record stored one per object, else `default` [N] (key absent)."""
    return tf.cond(tf.equal(tf.size(values), tf.size(default)), lambda: values, lambda: default)


def parse_example(serialized):
    """One serialized tf.train.Example (string []) -> example dict (see the module docstring).

    Graph-mode: usable in tf.data.Dataset.map.
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    # INTEGER_ACCURATE is libjpeg's JDCT_ISLOW, Pillow's default, so pixels match a Pillow decode.
    image = tf.io.decode_jpeg(parsed[fields.IMAGE_ENCODED], channels=3,
                              dct_method="INTEGER_ACCURATE")
    boxes = tf.stack([_dense(parsed[fields.OBJECT_YMIN]), _dense(parsed[fields.OBJECT_XMIN]),
                      _dense(parsed[fields.OBJECT_YMAX]), _dense(parsed[fields.OBJECT_XMAX])],
                     axis=1)  # [N, 4]
    boxes = tf.reshape(boxes, [-1, 4])
    height = tf.cast(parsed[fields.IMAGE_HEIGHT], tf.float32)
    width = tf.cast(parsed[fields.IMAGE_WIDTH], tf.float32)
    box_area = (boxes[:, 2] - boxes[:, 0]) * height * (boxes[:, 3] - boxes[:, 1]) * width  # [N]
    return {
        fields.IMAGE: image,
        fields.BOXES: boxes,
        fields.LABELS: tf.cast(_dense(parsed[fields.OBJECT_LABEL]), tf.int32),
        fields.DIFFICULT: tf.cast(_dense(parsed[fields.OBJECT_DIFFICULT]), tf.bool),
        fields.TRUNCATED: tf.cast(_dense(parsed[fields.OBJECT_TRUNCATED]), tf.bool),
        fields.IS_CROWD: _per_object_or(_dense(parsed[fields.OBJECT_IS_CROWD]) != 0,
                                        tf.zeros_like(box_area, tf.bool)),
        fields.AREA: _per_object_or(_dense(parsed[fields.OBJECT_AREA]), box_area),
        fields.IMAGE_ID: parsed[fields.IMAGE_SOURCE_ID],
        fields.FILENAME: parsed[fields.IMAGE_FILENAME],
        fields.HEIGHT: tf.cast(parsed[fields.IMAGE_HEIGHT], tf.int32),
        fields.WIDTH: tf.cast(parsed[fields.IMAGE_WIDTH], tf.int32),
    }


def read_split(data_dir, split):
    """tf.data.Dataset of example dicts from every shard of `split`, in file order (no shuffling)."""
    return tf.data.TFRecordDataset(shard_files(data_dir, split)).map(parse_example)
