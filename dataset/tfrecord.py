"""tf.train.Example building (TF Object Detection API keys, dataset/fields.py) and atomic shard files.

Shards are named `<split>-00000-of-00004`. Each is written to `<name>.tmp-<pid>` and renamed into place
with os.replace, so a conversion killed at any moment leaves no file that looks complete. The converter
writes a whole output set (every shard and the label map) into a temporary folder and swaps it in as a
whole (dataset/atomic.replace_folder), so shards of two runs never sit side by side.

Examples are serialized with `deterministic=True`: protobuf's map fields (the feature dict) are otherwise
written in an order that varies per process, and the output would differ byte for byte between runs.
"""

import dataclasses
import hashlib
import os
import re

from typing import Optional

import numpy as np
import tensorflow as tf

from dataset import fields

JPEG_FORMAT = b"jpeg"
_TMP_MARKER = ".tmp-"
# Every name the converter writes into an output folder (shards, their temporaries, the label map's).
# (coco_category_map.json: the COCO converter's id map, dataset/coco.py.)
_OUTPUT_NAME = re.compile(r"^([A-Za-z0-9_]+-\d{5}-of-\d{5}(\.tmp-\d+)?|label_map\.pbtxt|\.label_map\.pbtxt\w*\.tmp"
                          r"|coco_category_map\.json)$")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """Everything one record holds. Boxes are normalized [ymin, xmin, ymax, xmax] float32 [N, 4];
    labels are 1-based ids [N]; class_names, difficult, truncated and poses are per object [N].

    is_crowd (COCO `iscrowd`) defaults to all False and areas (pixels; COCO's annotation `area`) to
    the boxes' areas in pixels of this image, which is what VOC records store."""
    image_id: str
    filename: str
    jpeg: bytes
    width: int
    height: int
    boxes: np.ndarray
    labels: tuple
    class_names: tuple
    difficult: tuple
    truncated: tuple
    poses: tuple
    is_crowd: tuple = ()
    areas: Optional[np.ndarray] = None


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def box_areas_px(boxes, width, height):
    """Areas in pixels [N] of normalized yxyx boxes [N, 4] on a width x height image."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0]) * int(height) * (boxes[:, 3] - boxes[:, 1]) * int(width)


def build_example(record):
    """The tf.train.Example of an ImageRecord; `image/object/area` is in pixels (as COCO records)."""
    boxes = np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4)
    if record.areas is None:
        area_px = box_areas_px(boxes, record.width, record.height)
    else:
        area_px = np.asarray(record.areas, dtype=np.float64).reshape(-1)
    is_crowd = record.is_crowd or (0,) * len(record.labels)
    feature = {
        fields.IMAGE_ENCODED: _bytes([record.jpeg]),
        fields.IMAGE_FORMAT: _bytes([JPEG_FORMAT]),
        fields.IMAGE_FILENAME: _bytes([record.filename.encode()]),
        fields.IMAGE_SOURCE_ID: _bytes([record.image_id.encode()]),
        fields.IMAGE_KEY_SHA256: _bytes([hashlib.sha256(record.jpeg).hexdigest().encode()]),
        fields.IMAGE_HEIGHT: _ints([record.height]),
        fields.IMAGE_WIDTH: _ints([record.width]),
        fields.OBJECT_YMIN: _floats(boxes[:, 0]),
        fields.OBJECT_XMIN: _floats(boxes[:, 1]),
        fields.OBJECT_YMAX: _floats(boxes[:, 2]),
        fields.OBJECT_XMAX: _floats(boxes[:, 3]),
        fields.OBJECT_LABEL: _ints(record.labels),
        fields.OBJECT_TEXT: _bytes([n.encode() for n in record.class_names]),
        fields.OBJECT_DIFFICULT: _ints(record.difficult),
        fields.OBJECT_TRUNCATED: _ints(record.truncated),
        fields.OBJECT_VIEW: _bytes([p.encode() for p in record.poses]),
        fields.OBJECT_AREA: _floats(area_px),
        fields.OBJECT_IS_CROWD: _ints(is_crowd),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def serialize(example):
    """Bytes of a tf.train.Example, identical in every process for an identical example."""
    return example.SerializeToString(deterministic=True)


def shard_name(split, index, num_shards):
    """'train-00003-of-00008' for split 'train', shard index 3 of 8."""
    return "%s-%05d-of-%05d" % (split, index, num_shards)


def write_shard(path, serialized_examples):
    """Write serialized examples to the TFRecord file `path` atomically; returns how many."""
    tmp = "%s%s%d" % (path, _TMP_MARKER, os.getpid())
    count = 0
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for serialized in serialized_examples:
                writer.write(serialized)
                count += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count


def is_converter_output(name):
    """True for a file name the converter writes into an output folder (so it may replace the folder)."""
    return bool(_OUTPUT_NAME.match(name))
