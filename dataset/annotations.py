"""Every box of a dataset as flat numpy columns, from converted records or a VOC-layout source folder,
for the dataset doctor (analyze_dataset.py, dataset/lint.py, model/anchor_stats.py).

    table = annotations.from_records("dataset/tfrecords", "train")     # any converter's shards
    table = annotations.from_voc("dataset/sample", "train")           # VOC source, boxes as converted
    images = annotations.load_images(table, [0, 5])                  # {image index: uint8 [H, W, 3]}

Boxes are normalized [ymin, xmin, ymax, xmax] (DESIGN.md). A VOC source is read as the converter
would store it: the real image size wins over the XML <size>, and boxes are clipped or dropped by
dataset/convert.py's fix_boxes, each such repair kept in `notes`. COCO source folders are recognised
(`detect_source`) but read through their records: convert them first (dataset/coco.py).
"""

import dataclasses
import glob
import io
import os
import time

import numpy as np
from absl import logging
from PIL import Image

from dataset import fields, label_map, voc
from dataset.voc_boxes import voc_pixels_to_normalized

RECORDS, VOC, COCO = "records", "voc", "coco"
PROGRESS_EVERY_S = 5.0


@dataclasses.dataclass
class Annotations:
    """Images [I] and boxes [N] of one split. `box_image[n]` is the index of box n's image."""
    source: str
    class_names: tuple
    image_ids: list                 # [I] str
    widths: np.ndarray              # [I] int, pixels of the stored image
    heights: np.ndarray             # [I] int
    box_image: np.ndarray           # [N] int
    boxes: np.ndarray               # [N, 4] float64 normalized yxyx
    labels: np.ndarray              # [N] int, 1..C
    difficult: np.ndarray           # [N] bool
    crowd: np.ndarray               # [N] bool (COCO iscrowd; False for VOC)
    image_refs: list                # [I] ("file", path) or ("record", shard path, record index)
    notes: list = dataclasses.field(default_factory=list)     # [(image id, what was repaired)]
    skipped: list = dataclasses.field(default_factory=list)   # [(path, reason)] unreadable files

    @property
    def num_images(self):
        return len(self.image_ids)


def detect_source(path):
    """RECORDS, VOC or COCO for a folder of shards + label map, a VOC layout or COCO JSON; else None."""
    if os.path.exists(os.path.join(path, label_map.LABEL_MAP_FILENAME)) and glob.glob(
            os.path.join(path, "*-?????-of-?????")):
        return RECORDS
    if os.path.isdir(os.path.join(path, voc.ANNOTATIONS_DIR)):
        return VOC
    if path.endswith(".json") or glob.glob(os.path.join(path, "*.json")) or glob.glob(
            os.path.join(path, "annotations", "*.json")):
        return COCO
    return None


class _Progress:
    def __init__(self, label, total):
        self.label, self.total, self.start, self.last = label, total, time.monotonic(), time.monotonic()

    def update(self, done, unit):
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        logging.info("%s: %d/%d %s, %.1f/s, ETA %.0f s", self.label, done, self.total, unit, rate,
                     (self.total - done) / max(rate, 1e-9))


def _columns(source, class_names, images, boxes, notes=(), skipped=()):
    """Annotations from per-image tuples (id, width, height, ref) and per-box rows."""
    rows = list(zip(*boxes)) if boxes else [[], [], [], [], []]
    box_image, coords, labels, difficult, crowd = rows
    return Annotations(
        source=source, class_names=tuple(class_names),
        image_ids=[i[0] for i in images],
        widths=np.asarray([i[1] for i in images], np.int64),
        heights=np.asarray([i[2] for i in images], np.int64),
        box_image=np.asarray(box_image, np.int64),
        boxes=np.asarray(coords, np.float64).reshape(-1, 4),
        labels=np.asarray(labels, np.int64), difficult=np.asarray(difficult, bool),
        crowd=np.asarray(crowd, bool), image_refs=[i[3] for i in images],
        notes=list(notes), skipped=list(skipped))


def from_records(data_dir, split):
    """Every record of `split`'s shards in `data_dir` (any converter writing the OD API keys)."""
    import tensorflow as tf

    from dataset import reader
    class_names = label_map.read_label_map(os.path.join(data_dir, label_map.LABEL_MAP_FILENAME))
    features = {
        fields.IMAGE_SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        fields.IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
        fields.IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        fields.IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
        **{key: tf.io.VarLenFeature(tf.float32) for key in (
            fields.OBJECT_YMIN, fields.OBJECT_XMIN, fields.OBJECT_YMAX, fields.OBJECT_XMAX)},
        **{key: tf.io.VarLenFeature(tf.int64) for key in (
            fields.OBJECT_LABEL, fields.OBJECT_DIFFICULT, fields.OBJECT_IS_CROWD)},
    }

    def parse(serialized):
        parsed = tf.io.parse_single_example(serialized, features)
        return {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v
                for k, v in parsed.items()}

    shards = reader.shard_files(data_dir, split)
    progress = _Progress(f"reading {split} records", len(shards))
    images, boxes = [], []
    for shard_index, shard in enumerate(shards):
        dataset = tf.data.TFRecordDataset(shard).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        for record_index, example in enumerate(dataset.as_numpy_iterator()):
            image = len(images)
            image_id = example[fields.IMAGE_SOURCE_ID].decode() or f"{os.path.basename(shard)}#{record_index}"
            images.append((image_id, int(example[fields.IMAGE_WIDTH]), int(example[fields.IMAGE_HEIGHT]),
                           ("record", shard, record_index)))
            coords = np.stack([example[k] for k in (fields.OBJECT_YMIN, fields.OBJECT_XMIN,
                                                    fields.OBJECT_YMAX, fields.OBJECT_XMAX)], axis=1)
            n = len(coords)

            def flags(key):  # optional per-object ints; absent means 0 for every object
                values = example[key]
                return values.astype(bool) if len(values) == n else np.zeros(n, bool)
            difficult, crowd = flags(fields.OBJECT_DIFFICULT), flags(fields.OBJECT_IS_CROWD)
            boxes.extend((image, coords[i], int(example[fields.OBJECT_LABEL][i]), difficult[i], crowd[i])
                         for i in range(n))
        progress.update(shard_index + 1, "shards")
    return _columns(f"records {data_dir} ({split})", class_names, images, boxes)


def from_voc(voc_dir, image_set=None, class_names=None):
    """A VOC-layout folder's image set (default: trainval.txt, else every XML), boxes as converted.

    Class ids follow `class_names` (default: the sorted names found, as the converter's default label
    map); objects of other classes are dropped with a note. Unreadable files are listed in `skipped`.
    """
    from dataset.convert import fix_boxes
    ids = voc.read_image_set(voc_dir, image_set) if image_set else voc.default_image_ids(voc_dir)
    progress = _Progress(f"reading {voc_dir}", len(ids))
    parsed, skipped = [], []
    for done, image_id in enumerate(ids, start=1):
        try:
            annotation = voc.read_annotation(voc_dir, image_id)
            path = voc.find_image(voc_dir, image_id)
            with Image.open(path) as image:   # the header only: the real size wins over <size>
                width, height = image.size
        except (voc.BadInput, OSError) as e:
            skipped.append((os.path.join(voc_dir, image_id), str(e)))
            continue
        parsed.append((image_id, path, width, height, annotation))
        progress.update(done, "images")
    if class_names is None:
        class_names = sorted({o.name for *_, a in parsed for o in a.objects})
    ids_of = {name: i + 1 for i, name in enumerate(class_names)}
    images, boxes, notes = [], [], []
    for image_id, path, width, height, annotation in parsed:
        objects = [o for o in annotation.objects if o.name in ids_of]
        notes.extend((image_id, f"dropped object of class {o.name!r} not in the label map")
                     for o in annotation.objects if o.name not in ids_of)
        objects, box_notes = fix_boxes(objects, width, height)
        notes.extend((image_id, note) for note in box_notes)
        coords = voc_pixels_to_normalized([o.box for o in objects], width, height)
        image = len(images)
        images.append((image_id, width, height, ("file", path)))
        boxes.extend((image, coords[i], ids_of[o.name], o.difficult, False) for i, o in enumerate(objects))
    suffix = f" ({image_set})" if image_set else ""
    return _columns(f"VOC {voc_dir}{suffix}", class_names, images, boxes, notes, skipped)


def load_images(table, indices):
    """{image index: uint8 [H, W, 3] RGB} for the given image indices (one pass per shard needed)."""
    wanted = sorted(set(int(i) for i in indices))
    out, by_shard = {}, {}
    for index in wanted:
        ref = table.image_refs[index]
        if ref[0] == "file":
            with Image.open(ref[1]) as image:
                out[index] = np.asarray(image.convert("RGB"))
        else:
            by_shard.setdefault(ref[1], {})[ref[2]] = index
    if by_shard:
        import tensorflow as tf
        for shard, positions in by_shard.items():
            last = max(positions)
            parse = {fields.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)}
            for position, serialized in enumerate(tf.data.TFRecordDataset(shard).take(last + 1)):
                if position in positions:
                    encoded = tf.io.parse_single_example(serialized, parse)[fields.IMAGE_ENCODED]
                    with Image.open(io.BytesIO(encoded.numpy())) as image:
                        out[positions[position]] = np.asarray(image.convert("RGB"))
    return out
