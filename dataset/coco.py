"""COCO instances JSON: parsing, validation, the category id map, and COCO's box convention.

Boxes. COCO's `bbox` is `[x, y, width, height]` in continuous pixels with the origin at the image's
top-left corner: a box covering the whole W x H image is [0, 0, W, H]. There is no +1 (unlike VOC,
dataset/voc_boxes.py), so the two conversions are plain scalings, inverse to each other:

    xmin_norm = x / W    xmax_norm = (x + width) / W       x = xmin_norm * W    width = (xmax_norm - xmin_norm) * W

Category ids. COCO 2017's 80 categories carry ids in 1..90 with gaps (a legacy of the 91 categories
of the 2014 paper). The records use contiguous ids 1..C in the order of increasing COCO id (DESIGN.md:
0 is background, logits have C + 1 columns). `CategoryMap` is the only place that maps between the
two; the converter writes it beside the records as `coco_category_map.json` (with label_map.pbtxt),
and evaluation reads it there to write results with COCO's own category ids.

Image ids. A COCO record's `image/source_id` is the decimal COCO image id (as in the TF Object
Detection API's create_coco_tf_record.py), so results carry the original ids.

Parsing the real files. instances_train2017.json is about 450 MB, almost all of it segmentation
polygons, which detection never uses. `load_instances` parses with a json object_hook that takes each
annotation's few fields into flat arrays as soon as the decoder closes its dict, so the polygons are
freed one annotation at a time instead of all living at once as Python floats (see
benchmarks/convert_coco.py for the measured peak).
"""

import array
import dataclasses
import json
import math
import os

import numpy as np

from dataset.atomic import write_atomically

CATEGORY_MAP_FILENAME = "coco_category_map.json"
_REQUIRED_KEYS = ("images", "annotations", "categories")


class NotInstancesError(ValueError):
    """A JSON file that is not a COCO instances file (e.g. captions, or not COCO at all)."""


# --- boxes -----------------------------------------------------------------------------------------

def coco_xywh_to_normalized(boxes_xywh, width, height):
    """COCO [x, y, w, h] pixels [N, 4] -> normalized [ymin, xmin, ymax, xmax] [N, 4] float32.

    `width`/`height` may be scalars or arrays broadcastable to [N] (one image size per box).
    """
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    width = np.asarray(width, dtype=np.float64)
    height = np.asarray(height, dtype=np.float64)
    out = np.stack([b[:, 1] / height, b[:, 0] / width,
                    (b[:, 1] + b[:, 3]) / height, (b[:, 0] + b[:, 2]) / width], axis=1)
    return out.astype(np.float32)


def normalized_to_coco_xywh(boxes, width, height):
    """Normalized [ymin, xmin, ymax, xmax] [N, 4] -> COCO [x, y, w, h] pixels [N, 4] float64.

    `width`/`height` may be scalars or arrays broadcastable to [N] (one original size per box).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    width = np.asarray(width, dtype=np.float64)
    height = np.asarray(height, dtype=np.float64)
    return np.stack([b[:, 1] * width, b[:, 0] * height,
                     (b[:, 3] - b[:, 1]) * width, (b[:, 2] - b[:, 0]) * height], axis=1)


# --- categories ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CategoryMap:
    """Contiguous id k (1..C) <-> COCO category id coco_ids[k - 1]; names and supercategories alike."""
    coco_ids: tuple
    names: tuple
    supercategories: tuple

    @classmethod
    def from_categories(cls, categories):
        """From a COCO `categories` list (any order): contiguous ids in increasing COCO id order."""
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(int(c["id"]) for c in ordered), tuple(str(c["name"]) for c in ordered),
                   tuple(str(c.get("supercategory", "")) for c in ordered))

    @property
    def num_classes(self):
        return len(self.coco_ids)

    def contiguous_ids(self, coco_ids):
        """COCO category ids (int array) -> contiguous 1..C; 0 where the COCO id is unknown."""
        lookup = np.zeros(max(self.coco_ids) + 2, dtype=np.int64)
        lookup[list(self.coco_ids)] = np.arange(1, self.num_classes + 1)
        ids = np.asarray(coco_ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < lookup.size)
        return np.where(inside, lookup[np.clip(ids, 0, lookup.size - 1)], 0)

    def to_coco_ids(self, contiguous_ids):
        """Contiguous ids 1..C (int array) -> COCO category ids."""
        return np.asarray(self.coco_ids, dtype=np.int64)[np.asarray(contiguous_ids, np.int64) - 1]

    def categories(self):
        """The COCO `categories` list this map describes."""
        return [{"id": i, "name": n, "supercategory": s}
                for i, n, s in zip(self.coco_ids, self.names, self.supercategories)]

    def to_json(self):
        return json.dumps({"categories": [dict(c, contiguous_id=k + 1)
                                          for k, c in enumerate(self.categories())]}, indent=1)


def write_category_map(output_dir, category_map):
    """Write `coco_category_map.json` into `output_dir` atomically; returns its path."""
    path = os.path.join(output_dir, CATEGORY_MAP_FILENAME)
    write_atomically(path, category_map.to_json() + "\n")
    return path


def read_category_map(path):
    """A CategoryMap from a coco_category_map.json (its contiguous ids must be 1..C in order)."""
    with open(path) as f:
        categories = json.load(f)["categories"]
    if [c["contiguous_id"] for c in categories] != list(range(1, len(categories) + 1)):
        raise ValueError("%s: contiguous ids are not 1..C in order" % path)
    return CategoryMap(tuple(int(c["id"]) for c in categories), tuple(c["name"] for c in categories),
                       tuple(c.get("supercategory", "") for c in categories))


def find_category_map(data_dir):
    """The CategoryMap beside records in `data_dir`, or None for non-COCO (e.g. VOC) records."""
    path = os.path.join(data_dir, CATEGORY_MAP_FILENAME)
    return read_category_map(path) if os.path.exists(path) else None


# --- parsing ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Instances:
    """One instances JSON, flattened. Images [N] and annotations [K] in file order.

    image_ids int64 [N], file_names [N] str, widths/heights int64 [N];
    ann_ids int64 [K] (-1 where absent), ann_image_ids int64 [K], ann_category_ids int64 [K],
    ann_boxes float64 [K, 4] COCO xywh,
    ann_areas float64 [K], ann_is_crowd bool [K];
    categories: the file's `categories` list; malformed: [(what, reason)] entries that could not be read.
    """
    image_ids: np.ndarray
    file_names: list
    widths: np.ndarray
    heights: np.ndarray
    ann_ids: np.ndarray
    ann_image_ids: np.ndarray
    ann_category_ids: np.ndarray
    ann_boxes: np.ndarray
    ann_areas: np.ndarray
    ann_is_crowd: np.ndarray
    categories: list
    malformed: list


class _Sentinel:
    """Stands in for an annotation or image dict once its fields are taken out."""
    __slots__ = ()


_TAKEN = _Sentinel()


def _get(entry, key):
    return entry.get(key) if isinstance(entry, dict) else None


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Collector:
    """json object_hook: flattens annotation and image dicts into arrays as the decoder closes them."""

    def __init__(self):
        self.ann_ids = array.array("q")
        self.ann_image_ids, self.ann_category_ids = array.array("q"), array.array("q")
        self.ann_boxes, self.ann_areas = array.array("d"), array.array("d")
        self.ann_is_crowd = array.array("b")
        self.image_ids, self.widths, self.heights = array.array("q"), array.array("q"), array.array("q")
        self.file_names = []
        self.malformed = []
        self.num_annotation_dicts = 0
        self.num_image_dicts = 0

    def __call__(self, obj):
        if "bbox" in obj and "image_id" in obj:
            self.num_annotation_dicts += 1
            self._annotation(obj)
            return _TAKEN
        if "file_name" in obj and "id" in obj:
            self.num_image_dicts += 1
            self._image(obj)
            return _TAKEN
        return obj

    def _annotation(self, obj):
        what = "annotation %s" % (obj.get("id"),)
        box = obj["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_finite_number(v) for v in box)):
            self.malformed.append((what, "bbox %r is not 4 finite numbers" % (box,)))
            return
        image_id, category_id = obj["image_id"], obj.get("category_id")
        if not _is_int(image_id) or not _is_int(category_id):
            self.malformed.append((what, "image_id %r / category_id %r not integers"
                                   % (image_id, category_id)))
            return
        crowd = obj.get("iscrowd", 0)
        if crowd not in (0, 1):
            self.malformed.append((what, "iscrowd %r is not 0 or 1" % (crowd,)))
            return
        area = obj.get("area", box[2] * box[3])
        if not _is_finite_number(area) or area < 0:
            self.malformed.append((what, "area %r is not a non-negative number" % (area,)))
            return
        ann_id = obj.get("id")
        self.ann_ids.append(ann_id if _is_int(ann_id) else -1)
        self.ann_image_ids.append(image_id)
        self.ann_category_ids.append(category_id)
        self.ann_boxes.extend(float(v) for v in box)
        self.ann_areas.append(float(area))
        self.ann_is_crowd.append(int(crowd))

    def _image(self, obj):
        image_id, name = obj["id"], obj["file_name"]
        width, height = obj.get("width"), obj.get("height")
        what = "image %s" % (image_id,)
        if not _is_int(image_id) or not isinstance(name, str):
            self.malformed.append((what, "id %r / file_name %r malformed" % (image_id, name)))
            return
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            self.malformed.append((what, "size %rx%r is not positive integers" % (width, height)))
            return
        self.image_ids.append(image_id)
        self.file_names.append(name)
        self.widths.append(width)
        self.heights.append(height)


def load_instances(path):
    """Parse and validate an instances JSON (instances_val2017.json or the sample's).

    Raises NotInstancesError with one line naming the file and the problem when the JSON is not COCO
    instances (unreadable JSON, missing images/annotations/categories, annotations without bbox as in
    captions files, categories without integer id and name). Entries that cannot be read are kept in
    `malformed`, for the converter to count and name.
    """
    collector = _Collector()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, object_hook=collector)
    except FileNotFoundError:
        raise NotInstancesError("%s: file not found" % path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NotInstancesError("%s: not valid JSON (%s)" % (path, e)) from None
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in _REQUIRED_KEYS):
        raise NotInstancesError("%s: not a COCO instances file (needs lists %s)"
                                % (path, ", ".join(_REQUIRED_KEYS)))
    images, annotations = data["images"], data["annotations"]
    odd_annotations = [a for a in annotations if a is not _TAKEN]
    if annotations and len(odd_annotations) == len(annotations):
        raise NotInstancesError("%s: not a COCO instances file: no annotation has bbox and image_id "
                                "(a captions or other COCO task file?)" % path)
    odd_images = [i for i in images if i is not _TAKEN]
    if images and len(odd_images) == len(images):
        raise NotInstancesError("%s: not a COCO instances file: no image has id and file_name" % path)
    if (collector.num_annotation_dicts != len(annotations) - len(odd_annotations)
            or collector.num_image_dicts != len(images) - len(odd_images)):
        raise NotInstancesError("%s: not a COCO instances file: image or annotation dicts outside "
                                "the images/annotations lists" % path)
    for entry in odd_annotations:
        collector.malformed.append(("annotation %s" % (_get(entry, "id"),), "no bbox or image_id"))
    for entry in odd_images:
        collector.malformed.append(("image %s" % (_get(entry, "id"),), "no id or file_name"))
    categories = data["categories"]
    if not categories or not all(isinstance(c, dict) and _is_int(c.get("id"))
                                 and isinstance(c.get("name"), str) for c in categories):
        raise NotInstancesError("%s: categories must be a non-empty list of {id: int, name: str}" % path)
    ids = [c["id"] for c in categories]
    names = [c["name"] for c in categories]
    if len(set(ids)) != len(ids) or len(set(names)) != len(names) or min(ids) < 1:
        raise NotInstancesError("%s: category ids must be unique and >= 1, names unique" % path)
    c = collector
    return Instances(
        image_ids=np.frombuffer(c.image_ids, dtype=np.int64).copy(), file_names=c.file_names,
        widths=np.frombuffer(c.widths, dtype=np.int64).copy(),
        heights=np.frombuffer(c.heights, dtype=np.int64).copy(),
        ann_ids=np.frombuffer(c.ann_ids, dtype=np.int64).copy(),
        ann_image_ids=np.frombuffer(c.ann_image_ids, dtype=np.int64).copy(),
        ann_category_ids=np.frombuffer(c.ann_category_ids, dtype=np.int64).copy(),
        ann_boxes=np.frombuffer(c.ann_boxes, dtype=np.float64).reshape(-1, 4).copy(),
        ann_areas=np.frombuffer(c.ann_areas, dtype=np.float64).copy(),
        ann_is_crowd=np.frombuffer(c.ann_is_crowd, dtype=np.int8).astype(bool),
        categories=categories, malformed=c.malformed)
