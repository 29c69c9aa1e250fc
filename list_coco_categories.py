"""List the categories of a COCO instances JSON or of converted records: ids, names, images and boxes.

    python3 list_coco_categories.py                                   # the sample's val JSON
    python3 list_coco_categories.py --annotations_file ~/coco/annotations/instances_val2017.json
    python3 list_coco_categories.py --label_map dataset/coco_tfrecords/label_map.pbtxt --split val
    python3 list_coco_categories.py --annotations_file ... --json     # one JSON object

Columns: id (the contiguous label-map id 1..C the records and the model use), coco_id (the JSON's
category id), name, supercategory, images (holding at least one box of the category) and boxes
(crowd boxes included; `crowd` counts them). With --label_map, the COCO ids and supercategories come
from coco_category_map.json beside it, when there, and the counts from the `--split` shards beside
it, when there. The JSON object is always the last line.
"""

import json
import os

import numpy as np
from absl import flags

from dataset import coco, label_map, make_sample
from engine import cli

_HERE = os.path.dirname(os.path.abspath(__file__))

FLAGS = flags.FLAGS
flags.DEFINE_string("annotations_file", os.path.join(_HERE, "dataset", "sample",
                                                     make_sample.COCO_ANNOTATIONS_DIR, "instances_val.json"),
                    "COCO instances JSON to list (ignored when --label_map is given).")
flags.DEFINE_string("label_map", "", "A label_map.pbtxt (e.g. beside converted records) to list instead.")
flags.DEFINE_string("split", "val", "With --label_map: the shards <split>-*-of-* beside it to count.")
flags.DEFINE_bool("json", False, "Print only one JSON object instead of the table.")


def _rows_from_json(path):
    instances = coco.load_instances(path)
    category_map = coco.CategoryMap.from_categories(instances.categories)
    labels = category_map.contiguous_ids(instances.ann_category_ids)
    boxes = np.bincount(labels, minlength=category_map.num_classes + 1)
    crowd = np.bincount(labels[instances.ann_is_crowd], minlength=category_map.num_classes + 1)
    pairs = np.unique(np.stack([instances.ann_image_ids, labels], axis=1), axis=0)
    images = np.bincount(pairs[:, 1], minlength=category_map.num_classes + 1)
    return [_row(k + 1, category_map, images[k + 1], boxes[k + 1], crowd[k + 1])
            for k in range(category_map.num_classes)], {"source": path, "images": len(instances.image_ids),
                                                        "boxes": int(len(labels))}


def _row(k, category_map, images, boxes, crowd):
    return {"id": k, "coco_id": int(category_map.coco_ids[k - 1]), "name": category_map.names[k - 1],
            "supercategory": category_map.supercategories[k - 1], "images": int(images),
            "boxes": int(boxes), "crowd": int(crowd)}


def _counts_from_records(data_dir, split, num_classes):
    """(images per class, boxes per class, crowd per class, images) from the label and crowd keys only."""
    import tensorflow as tf
    from dataset import fields, reader
    features = {fields.OBJECT_LABEL: tf.io.VarLenFeature(tf.int64),
                fields.OBJECT_IS_CROWD: tf.io.VarLenFeature(tf.int64)}
    images = np.zeros(num_classes + 1, np.int64)
    boxes, crowd = images.copy(), images.copy()
    count = 0
    for serialized in tf.data.TFRecordDataset(reader.shard_files(data_dir, split)):
        parsed = tf.io.parse_single_example(serialized, features)
        labels = tf.sparse.to_dense(parsed[fields.OBJECT_LABEL]).numpy()
        is_crowd = tf.sparse.to_dense(parsed[fields.OBJECT_IS_CROWD]).numpy().astype(bool)
        boxes += np.bincount(labels, minlength=num_classes + 1)
        if is_crowd.size == labels.size:
            crowd += np.bincount(labels[is_crowd], minlength=num_classes + 1)
        images[np.unique(labels)] += 1
        count += 1
    return images, boxes, crowd, count


def _rows_from_label_map(path, split):
    names = label_map.read_label_map(path)
    data_dir = os.path.dirname(os.path.abspath(path))
    category_map = coco.find_category_map(data_dir)
    if category_map is None:
        category_map = coco.CategoryMap(tuple(range(1, len(names) + 1)), names, ("",) * len(names))
    elif tuple(category_map.names) != tuple(names):
        raise ValueError("%s and the coco_category_map.json beside it name different classes" % path)
    summary = {"source": path}
    try:
        images, boxes, crowd, count = _counts_from_records(data_dir, split, len(names))
        summary.update(split=split, images=int(count), boxes=int(boxes.sum()))
    except ValueError:  # no shards of that split beside the label map: names and ids only
        images = boxes = crowd = np.zeros(len(names) + 1, np.int64)
    return [_row(k, category_map, images[k], boxes[k], crowd[k]) for k in range(1, len(names) + 1)], summary


def format_table(rows, summary):
    width = max([len("name")] + [len(r["name"]) for r in rows])
    sup = max([len("supercategory")] + [len(r["supercategory"]) for r in rows])
    lines = ["%4s %7s  %-*s  %-*s %8s %8s %7s" % ("id", "coco_id", width, "name", sup, "supercategory",
                                               "images", "boxes", "crowd")]
    lines += ["%4d %7d  %-*s  %-*s %8d %8d %7d" % (r["id"], r["coco_id"], width, r["name"], sup,
                                                 r["supercategory"], r["images"], r["boxes"], r["crowd"])
              for r in rows]
    lines.append("%d categories; %s" % (len(rows), ", ".join(
        "%s %s" % (k, v) for k, v in summary.items())))
    return "\n".join(lines)


def main(argv):
    del argv
    # A missing or unreadable file (OSError) or one that is no instances file (coco.NotInstancesError, a
    # ValueError): one line (engine/cli.py).
    if FLAGS.label_map:
        rows, summary = _rows_from_label_map(FLAGS.label_map, FLAGS.split)
    else:
        rows, summary = _rows_from_json(FLAGS.annotations_file)
    if not FLAGS.json:
        print(format_table(rows, summary))
    print(json.dumps(dict(summary, categories=rows)))


if __name__ == "__main__":
    cli.run(main)
