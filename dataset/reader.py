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

Records written by other tools may hold boxes our converter never writes: NaN or infinite coordinates,
or an inverted or empty box (ymax <= ymin or xmax <= xmin; box coding takes log(height), so an empty
box is -inf in the loss). parse_example drops such objects (with their label and flags) and prints a
warning naming the record and how many it dropped, instead of letting them reach the loss.
"""

import glob
import os
import struct
import sys

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
        raise ValueError("no %s shards (%s-?????-of-?????) in %s: convert the dataset into it "
                         "(python3 convert_voc_sample_tfrecords.py --output_directory %s)"
                         % (split, split, data_dir, data_dir))
    return files


# A TFRecord is a sequence of: uint64 length, uint32 masked CRC of the length, data, uint32 CRC of data.
_RECORD_HEADER = struct.Struct("<QI")
_DATA_CRC_BYTES = 4


def count_records(path):
    """Records in the TFRecord file `path`, from the length headers alone (seeks over the data).

    Raises ValueError naming the file when it ends inside a record (a truncated or corrupted shard).
    """
    count = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        size = f.size()
        position = 0
        while position < size:
            header = f.read(_RECORD_HEADER.size)
            if len(header) < _RECORD_HEADER.size:
                raise ValueError("%s is corrupted: it ends inside a record header (reconvert it)" % path)
            length, _ = _RECORD_HEADER.unpack(header)
            position += _RECORD_HEADER.size + length + _DATA_CRC_BYTES
            if position > size:
                raise ValueError("%s is corrupted: a record runs past the end of the file (reconvert it)"
                                 % path)
            f.seek(position)
            count += 1
    return count


def find_corrupt_shard(files):
    """(path, reason) of the first file of `files` that TensorFlow cannot read through, else None.

    For naming the file behind a DataLossError ("corrupted record at N"), which TF reports without it.
    """
    for path in files:
        try:
            for _ in tf.data.TFRecordDataset(path).batch(256):
                pass
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
            message = e.message.split("}} ", 1)[-1]  # without TF's "{{function_node ...}}" prefix
            return path, message.split(" [Op:")[0]
    return None


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
    labels = tf.cast(_dense(parsed[fields.OBJECT_LABEL]), tf.int32)
    difficult = tf.cast(_dense(parsed[fields.OBJECT_DIFFICULT]), tf.bool)
    truncated = tf.cast(_dense(parsed[fields.OBJECT_TRUNCATED]), tf.bool)
    height = tf.cast(parsed[fields.IMAGE_HEIGHT], tf.float32)
    width = tf.cast(parsed[fields.IMAGE_WIDTH], tf.float32)
    box_area = (boxes[:, 2] - boxes[:, 0]) * height * (boxes[:, 3] - boxes[:, 1]) * width  # [N]
    # Records without crowd flags or areas (VOC's): not crowd, the box's area in pixels.
    is_crowd = _per_object_or(_dense(parsed[fields.OBJECT_IS_CROWD]) != 0, tf.zeros_like(box_area, tf.bool))
    area = _per_object_or(_dense(parsed[fields.OBJECT_AREA]), box_area)
    keep = valid_boxes(boxes)
    num_dropped = tf.reduce_sum(tf.cast(tf.logical_not(keep), tf.int32))

    def warn():
        tf.print("WARNING: record", parsed[fields.IMAGE_SOURCE_ID], "has", num_dropped,
                 "boxes with NaN/infinite coordinates or no extent; dropped", output_stream=sys.stderr)
        return num_dropped

    num_dropped = tf.cond(num_dropped > 0, warn, lambda: num_dropped)
    with tf.control_dependencies([num_dropped]):
        keep = tf.identity(keep)

    def kept(values):
        # Optional per-object lists (difficult, truncated) may be absent: empty, nothing to mask.
        return tf.cond(tf.size(values) == tf.size(keep), lambda: tf.boolean_mask(values, keep),
                       lambda: values)

    return {
        fields.IMAGE: image,
        fields.BOXES: tf.boolean_mask(boxes, keep),
        fields.LABELS: kept(labels),
        fields.DIFFICULT: kept(difficult),
        fields.TRUNCATED: kept(truncated),
        fields.IS_CROWD: kept(is_crowd),
        fields.AREA: kept(area),
        fields.IMAGE_ID: parsed[fields.IMAGE_SOURCE_ID],
        fields.FILENAME: parsed[fields.IMAGE_FILENAME],
        fields.HEIGHT: tf.cast(parsed[fields.IMAGE_HEIGHT], tf.int32),
        fields.WIDTH: tf.cast(parsed[fields.IMAGE_WIDTH], tf.int32),
    }


def valid_boxes(boxes):
    """bool [N]: boxes [N, 4] (yxyx) whose coordinates are all finite and whose extent is positive."""
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=1)
    extent = tf.logical_and(boxes[:, 2] > boxes[:, 0], boxes[:, 3] > boxes[:, 1])
    return tf.logical_and(finite, extent)


def read_split(data_dir, split):
    """tf.data.Dataset of example dicts from every shard of `split`, in file order (no shuffling)."""
    return tf.data.TFRecordDataset(shard_files(data_dir, split)).map(parse_example)
