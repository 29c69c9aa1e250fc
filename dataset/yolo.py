"""YOLO / Ultralytics datasets -> TFRecord shards + label_map.pbtxt (convert_yolo_tfrecords.py).

The layout Roboflow and Ultralytics export (docs.ultralytics.com/datasets/detect):

    data.yaml      path: <root>       (optional; relative to data.yaml's folder; default: that folder)
                   train: images/train    (a folder of images, a .txt list of images, or a list of those)
                   val: images/val
                   names: [person, car]   (or a dict {0: person, 1: car}; `nc`, when given, must agree)
    images/train/a.jpg   labels/train/a.txt   one object per line: class cx cy w h, normalized to [0, 1]

An image's label file is found as Ultralytics finds it (img2label_paths): the last `/images/` of the
image path becomes `/labels/` and the extension `.txt`. Folders are read recursively, image files
picked by extension (IMAGE_EXTENSIONS) and sorted; list files keep their order, a relative line is
relative to the list's folder. YOLO class ids are 0-based, records' 1..C (label map = `names` in order).

Two passes, as the VOC and COCO converters: every label file is parsed and checked first (cheap), so an
unknown class id stops the run before anything is written; then each shard is written by one thread
(images validated by dataset/voc.py's load_image). Output is a function of the input only (a fixed
shuffle, then contiguous shards), and the whole set is swapped in at the end (dataset/atomic.py).

Bad input (docs/datasets.md has this table with what Ultralytics does for each):

    skipped image (exit 3 unless --allow_skips)   a line with a wrong number of fields (not 5, not a
        polygon of 1 + 2k, k >= 3), a class id that is no whole number >= 0, a coordinate that is not
        a number, not finite or outside [-0.01, 1.01] (pixel coordinates), a missing or corrupt image, two
        images of one stem in a split (every copy: they would share a label file and a record id)
    skipped label file (same status)   a label file without an image (folder splits only)
    repaired (record differs from the file)   a polygon line -> its bounding box (as Ultralytics' detect
        task, but line by line; an oriented box written as four corners is such a polygon), a box reaching outside the
        image -> clipped, a box of zero width or height -> dropped, an exact duplicate line -> dropped
        (as Ultralytics), a class id >= len(names) with --skip_unknown -> dropped
    kept as negatives   an image without a label file, an empty label file
    fatal, before writing (one line, status 2)   data.yaml missing, unreadable or without names or
        splits, a split path that does not exist, a class id >= len(names) without --skip_unknown
"""

import collections
import concurrent.futures
import dataclasses
import math
import os
import random

import numpy as np

from dataset import atomic, label_map, tfrecord, voc
from dataset.convert import SHUFFLE_SEED, Progress, why_not_converter_output

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")   # compared lower-cased
SPLITS = ("train", "val")
LABEL_SUFFIX = ".txt"
# LabelImg and some exports keep the class names beside the labels: not a label file.
CLASSES_FILE = "classes.txt"
BOX_FIELDS = 5                # class cx cy w h
MIN_POLYGON_POINTS = 3
# Labels are written with about six decimals (Ultralytics, Roboflow), so cx + w / 2 of a box touching
# the border lands up to 0.75e-6 past it: such rounding is clipped without a note.
ROUNDING = 1e-6
# Coordinates a little outside [0, 1] are accepted (and their boxes clipped), as Ultralytics'
# verify_image_label accepts [-0.01, 1.01]; further out they are pixel coordinates or garbage.
COORDINATE_TOLERANCE = 0.01

# Kinds of skips and repairs, as the summary counts them.
BAD_LABEL = "bad label file"
BAD_IMAGE = "missing or corrupt image"
DUPLICATE_STEM = "two images of one stem"
ORPHAN_LABEL = "label file without an image"
POLYGON = "polygon line -> its bounding box"
CLIPPED = "box clipped to the image"
ZERO_AREA = "dropped box of zero width or height"
DUPLICATE_LINE = "dropped duplicate line"
UNKNOWN_CLASS = "dropped box of a class id outside names"


class BadLabel(ValueError):
    """A label file the converter cannot read as YOLO boxes (its image is skipped)."""


class UnknownClassError(ValueError):
    """A class id >= len(names) (and --skip_unknown was not set)."""


@dataclasses.dataclass(frozen=True)
class DataYaml:
    """What a data.yaml says: the root folder, the class names and each split's sources (absolute)."""
    path: str
    root: str
    class_names: tuple
    splits: dict       # {"train": [folder or list file, ...], "val": [...]}


@dataclasses.dataclass
class SplitResult:
    """What happened to one output split; skipped and repaired hold (kind, where, detail) triples."""
    images: int = 0
    objects: int = 0
    images_without_objects: int = 0
    objects_per_class: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: list = dataclasses.field(default_factory=list)
    repaired: list = dataclasses.field(default_factory=list)
    shards: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class LabeledImage:
    """One image of a split and its parsed labels: boxes normalized yxyx float32 [N, 4], labels 1..C."""
    image_path: str
    image_id: str
    boxes: np.ndarray
    labels: tuple
    notes: tuple       # (kind, detail) repairs


def read_data_yaml(path):
    """Parses data.yaml; ValueError / FileNotFoundError in one line naming the file and the problem."""
    import yaml
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (a YOLO dataset is described by its data.yaml)")
    try:
        with open(path, encoding="utf-8") as f:
            spec = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not readable as YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping with names and train/val, got {type(spec).__name__}")
    names = spec.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: names keys must be class ids 0, 1, ..., got {list(names)[:5]}") from None
        if keys != list(range(len(names))):
            raise ValueError(f"{path}: names ids must be 0..{len(names) - 1} without gaps, got {keys[:10]}")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise ValueError(f"{path}: needs `names`, a list or a dict {{id: name}} of class names")
    names = tuple(str(n) for n in names)
    if "nc" in spec and spec["nc"] != len(names):
        raise ValueError(f"{path}: nc is {spec['nc']} but names lists {len(names)} classes")
    folder = os.path.dirname(os.path.abspath(path))
    root = os.path.join(folder, str(spec.get("path") or "."))
    splits = {}
    for split in SPLITS:
        value = spec.get(split)
        if not value:
            continue
        entries = value if isinstance(value, list) else [value]
        sources = [os.path.normpath(os.path.join(root, str(e))) for e in entries]
        for source in sources:
            if not os.path.exists(source):
                raise FileNotFoundError(f"{path}: {split} source {source} does not exist")
        splits[split] = sources
    if not splits:
        raise ValueError(f"{path}: names no split: give train and/or val (a folder or a .txt list of images)")
    return DataYaml(path, root, names, splits)


def label_path(image_path):
    """Ultralytics' img2label_paths: the last /images/ -> /labels/, the extension -> .txt."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, sep, tail = image_path.rpartition(images)
    joined = head + labels + tail if sep else image_path
    return os.path.splitext(joined)[0] + LABEL_SUFFIX


def _is_image(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(source):
    """Image paths of a folder (recursive, sorted) or a .txt list (in order; relative to its folder)."""
    if os.path.isdir(source):
        return sorted(os.path.join(d, f) for d, _, files in os.walk(source) for f in files if _is_image(f))
    folder = os.path.dirname(source)
    with open(source, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    return [os.path.normpath(line if os.path.isabs(line) else os.path.join(folder, line)) for line in lines]


def orphan_labels(source, image_paths):
    """Label files under a folder split's labels folder whose image is not among `image_paths`."""
    if not os.path.isdir(source):
        return []
    labels_dir = label_path(os.path.join(source, "x"))[:-len("x" + LABEL_SUFFIX)]
    if not os.path.isdir(labels_dir) or os.path.normpath(labels_dir) == os.path.normpath(source):
        return []
    expected = {label_path(p) for p in image_paths}
    return sorted(p for p in (os.path.join(d, f) for d, _, files in os.walk(labels_dir) for f in files)
                  if p.endswith(LABEL_SUFFIX) and os.path.basename(p) != CLASSES_FILE and p not in expected)


def _number(text, line_number, what):
    try:
        value = float(text)
    except ValueError:
        raise BadLabel(f"line {line_number}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise BadLabel(f"line {line_number}: {what} {text!r} is not finite")
    return value


def parse_labels(text, num_classes, skip_unknown=False, where=""):
    """One label file's text -> (boxes normalized yxyx float32 [N, 4], labels 1..C [N], notes).

    Raises BadLabel for a file whose image must be skipped and UnknownClassError for a class id
    >= num_classes (unless skip_unknown: dropped with a note). The module docstring lists the cases.
    """
    boxes, labels, notes, seen = [], [], [], set()
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        count = len(fields)
        if count != BOX_FIELDS and (count % 2 == 0 or count < 1 + 2 * MIN_POLYGON_POINTS):
            raise BadLabel(f"line {line_number}: {count} fields; a box has 5 (class cx cy w h), a polygon "
                           f"1 + 2k (class x1 y1 ... xk yk, k >= 3)")
        class_value = _number(fields[0], line_number, "class id")
        if class_value < 0 or class_value != int(class_value):
            raise BadLabel(f"line {line_number}: class id {fields[0]!r} is not a whole number >= 0")
        values = [_number(v, line_number, "coordinate") for v in fields[1:]]
        if min(values) < -COORDINATE_TOLERANCE or max(values) > 1.0 + COORDINATE_TOLERANCE:
            raise BadLabel(f"line {line_number}: coordinates outside [0, 1] (YOLO labels are normalized; "
                           f"pixel coordinates?)")
        key = (int(class_value), tuple(values))
        if key in seen:
            notes.append((DUPLICATE_LINE, f"{where} line {line_number}"))
            continue
        seen.add(key)
        if int(class_value) >= num_classes:
            if not skip_unknown:
                raise UnknownClassError(f"{where} line {line_number}: class id {int(class_value)} but names "
                                        f"has {num_classes} classes (ids 0..{num_classes - 1})")
            notes.append((UNKNOWN_CLASS, f"{where} line {line_number}: class id {int(class_value)}"))
            continue
        if count == BOX_FIELDS:
            cx, cy, w, h = values
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        else:
            xs, ys = values[0::2], values[1::2]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            notes.append((POLYGON, f"{where} line {line_number}: {len(xs)} points"))
        clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0))
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            notes.append((ZERO_AREA, f"{where} line {line_number}"))
            continue
        if min(x0, y0) < -ROUNDING or max(x1, y1) > 1.0 + ROUNDING:
            notes.append((CLIPPED, f"{where} line {line_number}"))
        boxes.append((clipped[1], clipped[0], clipped[3], clipped[2]))
        labels.append(int(class_value) + 1)
    return np.asarray(boxes, np.float32).reshape(-1, 4), tuple(labels), notes


def plan_split(sources, num_classes, skip_unknown, result):
    """[LabeledImage] of one split, every label file parsed; skips and orphans go to `result`.
    Raises UnknownClassError naming the file and line."""
    paths, orphans = [], []
    for source in sources:
        listed = list_images(source)
        paths += listed
        orphans += orphan_labels(source, listed)
    result.skipped += [(ORPHAN_LABEL, path, "no image of this stem in the split") for path in orphans]
    stems = collections.defaultdict(list)
    for path in paths:
        stems[os.path.splitext(os.path.basename(path))[0]].append(path)
    planned = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if len(stems[stem]) > 1:
            others = [p for p in stems[stem] if p != path]
            result.skipped.append((DUPLICATE_STEM, path, f"also {others[0]}"))
            continue
        labels_file = label_path(path)
        if not os.path.isfile(labels_file):      # a negative: no objects
            planned.append(LabeledImage(path, stem, np.zeros((0, 4), np.float32), (), ()))
            continue
        try:
            with open(labels_file, encoding="utf-8-sig") as f:   # -sig: a BOM some Windows tools write
                text = f.read()
            boxes, labels, notes = parse_labels(text, num_classes, skip_unknown, labels_file)
        except (BadLabel, UnicodeDecodeError) as error:
            result.skipped.append((BAD_LABEL, labels_file, str(error)))
            continue
        planned.append(LabeledImage(path, stem, boxes, labels, tuple(notes)))
    return planned


def build_record(item, class_names):
    """Load and validate the image of `item`; returns (ImageRecord, notes). Raises voc.BadInput."""
    try:
        with open(item.image_path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise voc.BadInput(f"cannot read the image ({error.strerror})") from None
    loaded = voc.load_image(data)
    n = len(item.labels)
    record = tfrecord.ImageRecord(
        image_id=item.image_id, filename=os.path.basename(item.image_path), jpeg=loaded.jpeg,
        width=loaded.width, height=loaded.height, boxes=item.boxes, labels=item.labels,
        class_names=tuple(class_names[label - 1] for label in item.labels), difficult=(0,) * n,
        truncated=(0,) * n, poses=())
    return record, list(item.notes) + [("image repaired", f"{item.image_path}: {r}") for r in loaded.repairs]


def _write_one_shard(path, items, class_names, progress):
    outcomes = []

    def serialized():
        for item in items:
            try:
                record, notes = build_record(item, class_names)
            except voc.BadInput as error:
                outcomes.append((item, None, [], str(error)))
            else:
                outcomes.append((item, record, notes, None))
                yield tfrecord.serialize(tfrecord.build_example(record))
            progress.add()

    tfrecord.write_shard(path, serialized())
    return outcomes


def convert_split(name, items, output_dir, num_shards, class_names, num_threads, result):
    """Shuffle `items` with the fixed seed and write `num_shards` contiguous shards."""
    items = list(items)
    random.Random(SHUFFLE_SEED).shuffle(items)
    bounds = np.linspace(0, len(items), num_shards + 1).astype(int)
    paths = [os.path.join(output_dir, tfrecord.shard_name(name, i, num_shards)) for i in range(num_shards)]
    progress = Progress(name, len(items))
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_threads) as pool:
        futures = [pool.submit(_write_one_shard, paths[i], items[bounds[i]:bounds[i + 1]], class_names, progress)
                   for i in range(num_shards)]
        outcomes = [o for f in futures for o in f.result()]
    for item, record, notes, reason in outcomes:
        if record is None:
            result.skipped.append((BAD_IMAGE, item.image_path, reason))
            continue
        result.images += 1
        result.objects += len(record.labels)
        result.images_without_objects += not record.labels
        result.objects_per_class.update(record.class_names)
        result.repaired.extend(notes)
    result.shards = paths


def convert(data, output_dir, num_shards, num_threads=4, skip_unknown=False):
    """Convert the splits of a DataYaml into `output_dir`; returns {split: SplitResult}.
    `num_shards` maps each split name to its shard count."""
    label_text = label_map.format_label_map(data.class_names)   # a name it cannot write fails first
    planned, results = {}, {}
    for name, sources in data.splits.items():
        results[name] = SplitResult()
        planned[name] = plan_split(sources, len(data.class_names), skip_unknown, results[name])
    with atomic.staged_folder(output_dir, why_not_converter_output) as staging:
        for name, items in planned.items():
            convert_split(name, items, staging, num_shards[name], data.class_names, num_threads, results[name])
        atomic.write_atomically(os.path.join(staging, label_map.LABEL_MAP_FILENAME), label_text)
    for result in results.values():
        result.shards = [os.path.join(output_dir, os.path.basename(p)) for p in result.shards]
    return results


def format_summary(results, class_names, max_listed=20):
    """Closing summary: counts per split and class, and every kind of skip or repair with examples."""
    lines = []
    for name, r in results.items():
        lines.append(f"{name}: {r.images} images, {r.objects} objects, {r.images_without_objects} images "
                     f"without objects, {len(r.shards)} shards")
        lines.append("  objects per class: " + ", ".join(f"{c} {r.objects_per_class[c]}" for c in class_names))
        for title, entries, describe in (("skipped", r.skipped, lambda e: f"{e[1]}: {e[2]}"),
                                         ("repaired", r.repaired, lambda e: e[1])):
            kinds = collections.Counter(e[0] for e in entries)
            lines.append(f"  {title}: {len(entries)}" + "".join(f"; {k} {n}" for k, n in sorted(kinds.items())))
            lines.extend(f"    {e[0]}: {describe(e)}" for e in entries[:max_listed])
            if len(entries) > max_listed:
                lines.append(f"    ... {len(entries) - max_listed} more")
    return "\n".join(lines)
