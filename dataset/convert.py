"""VOC-layout directories -> TFRecord shards + label_map.pbtxt, robust to bad files.

Two passes. First every annotation of every split is parsed (cheap), which fixes the class list
before anything is written: the given label map, or the sorted union of the class names seen (for
VOC: the standard 20 in alphabetical order). Then each shard is built by one worker: images are
loaded and validated (dataset/voc.py), boxes are clipped or dropped, records are serialized and the
shard is written atomically (dataset/tfrecord.py).

The whole output set (every shard of every split and label_map.pbtxt) is written into a temporary folder
beside the output folder and swapped in as a whole at the end (dataset/atomic.staged_folder): a run
killed at any moment leaves the previous set exactly as it was, never new shards beside old ones under
the old label map. The output folder must hold converter output only (it is replaced whole).

Output is a function of the inputs only: each split's image list is shuffled with a fixed seed and
cut into contiguous shards, so shard contents do not depend on the number of threads.
"""

import collections
import concurrent.futures
import dataclasses
import os
import random
import threading
import time

import numpy as np
from absl import logging

from dataset import atomic, label_map, tfrecord, voc
from dataset.voc_boxes import voc_pixels_to_normalized

SHUFFLE_SEED = 0
PROGRESS_EVERY_S = 5.0


class UnknownClassError(ValueError):
    """A class name that the given label map lacks (and --skip_unknown was not set)."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One VOC-layout directory and the image set read from it (None: the default list)."""
    directory: str
    image_set: str

    @classmethod
    def parse(cls, spec):
        """'VOC2007' or 'VOC2007:trainval' -> Split."""
        directory, _, image_set = spec.strip().partition(":")
        return cls(directory, image_set or None)

    def __str__(self):
        return self.directory + (":" + self.image_set if self.image_set else "")


@dataclasses.dataclass
class SplitResult:
    """What happened to one output split (e.g. 'train'); file lists hold (path, reason) pairs."""
    images: int = 0
    objects: int = 0
    difficult: int = 0
    images_without_objects: int = 0
    objects_per_class: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: list = dataclasses.field(default_factory=list)
    repaired: list = dataclasses.field(default_factory=list)
    shards: list = dataclasses.field(default_factory=list)


def list_images(dataset_dir, splits):
    """Image list of comma-merged `splits`: ([(voc_dir, image_id)] in list order, [(path, reason)]).

    Ids are unique within an output split (fields.IMAGE_ID); a repeated id is listed once and every
    later occurrence from another directory is returned as skipped.
    """
    tasks, duplicates, first_dir = [], [], {}
    for split in splits:
        voc_dir = os.path.join(dataset_dir, split.directory)
        if not os.path.isdir(voc_dir):
            raise FileNotFoundError("split %s: no directory %s" % (split, voc_dir))
        ids = (voc.read_image_set(voc_dir, split.image_set) if split.image_set
               else voc.default_image_ids(voc_dir))
        for image_id in ids:
            if image_id not in first_dir:
                first_dir[image_id] = voc_dir
                tasks.append((voc_dir, image_id))
            elif first_dir[image_id] != voc_dir:
                duplicates.append((os.path.join(voc_dir, image_id),
                                   "duplicate image id (already taken from %s)" % first_dir[image_id]))
    return tasks, duplicates


def fix_boxes(objects, width, height):
    """Clip VOC pixel boxes to a width x height image; drop inverted, zero-area and outside boxes.

    A VOC box (1-based inclusive) lies inside when 1 <= xmin and xmax <= width (likewise y). Pixels are
    inclusive, so xmin = xmax is a box one pixel wide (the devkit's width xmax - xmin + 1 = 1) and is
    kept; only an inverted box (xmax < xmin or ymax < ymin) has no extent an annotator could have meant
    and is dropped, before or after clipping. Returns (kept objects with clipped boxes, list of notes).
    """
    kept, notes = [], []
    for obj in objects:
        xmin, ymin, xmax, ymax = obj.box
        if xmax < xmin or ymax < ymin:
            notes.append("dropped inverted box %s of %s" % (obj.box, obj.name))
            continue
        clipped = (max(xmin, 1.0), max(ymin, 1.0), min(xmax, float(width)), min(ymax, float(height)))
        if clipped[2] < clipped[0] or clipped[3] < clipped[1]:
            notes.append("dropped box %s of %s outside the %dx%d image" % (obj.box, obj.name,
                                                                           width, height))
            continue
        if clipped != tuple(float(v) for v in obj.box):
            notes.append("clipped box %s of %s to the %dx%d image" % (obj.box, obj.name, width, height))
        kept.append(dataclasses.replace(obj, box=clipped))
    return kept, notes


def build_record(voc_dir, image_id, annotation, class_names, skip_unknown):
    """Load, validate and repair one image; returns (ImageRecord, repair notes). Raises BadInput."""
    image_path = voc.find_image(voc_dir, image_id)
    loaded = voc.load_image(_read(image_path))
    notes = list(loaded.repairs)
    if (annotation.width, annotation.height) != (loaded.width, loaded.height):
        # The real image wins; VOC boxes are absolute pixels, so they are kept as drawn and
        # normalized by the real size, then clipped like any box reaching outside.
        notes.append("XML size %dx%d differs from image %dx%d; real size used" % (
            annotation.width, annotation.height, loaded.width, loaded.height))
    ids = {name: i + 1 for i, name in enumerate(class_names)}
    objects = []
    for obj in annotation.objects:
        if obj.name in ids:
            objects.append(obj)
        elif skip_unknown:
            notes.append("dropped object of class %r missing from the label map" % obj.name)
        else:
            raise UnknownClassError("class %r (in %s) is not in the label map" % (obj.name, image_id))
    objects, box_notes = fix_boxes(objects, loaded.width, loaded.height)
    boxes = voc_pixels_to_normalized([o.box for o in objects], loaded.width, loaded.height)
    record = tfrecord.ImageRecord(
        image_id=image_id, filename=os.path.basename(image_path),
        jpeg=loaded.jpeg, width=loaded.width, height=loaded.height, boxes=boxes,
        labels=tuple(ids[o.name] for o in objects), class_names=tuple(o.name for o in objects),
        difficult=tuple(o.difficult for o in objects), truncated=tuple(o.truncated for o in objects),
        poses=tuple(o.pose for o in objects))
    return record, notes + box_notes


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class Progress:
    """Thread-safe image counter that logs count, rate and ETA at most every PROGRESS_EVERY_S."""

    def __init__(self, label, total):
        self._label, self._total, self._done = label, total, 0
        self._start = self._last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, n=1):
        with self._lock:
            self._done += n
            now = time.monotonic()
            if now - self._last < PROGRESS_EVERY_S and self._done < self._total:
                return
            self._last = now
            rate = self._done / max(now - self._start, 1e-9)
            eta = (self._total - self._done) / max(rate, 1e-9)
            logging.info("%s: %d/%d images, %.1f images/s, ETA %.0f s", self._label, self._done,
                         self._total, rate, eta)


def _write_one_shard(path, items, class_names, skip_unknown, progress):
    """Build and write one shard; returns per-image outcomes [(path, record|None, notes, reason)]."""
    outcomes = []

    def serialized():
        for voc_dir, image_id, annotation in items:
            where = os.path.join(voc_dir, image_id)
            try:
                record, notes = build_record(voc_dir, image_id, annotation, class_names,
                                             skip_unknown)
            except voc.BadInput as e:
                outcomes.append((where, None, [], str(e)))
            else:
                outcomes.append((where, record, notes, None))
                yield tfrecord.serialize(tfrecord.build_example(record))
            progress.add()

    tfrecord.write_shard(path, serialized())
    return outcomes


def convert_split(name, items, output_dir, num_shards, class_names, skip_unknown, num_threads,
                  result):
    """Shuffle `items` [(voc_dir, id, annotation)] with a fixed seed and write `num_shards` shards."""
    items = list(items)
    random.Random(SHUFFLE_SEED).shuffle(items)
    bounds = np.linspace(0, len(items), num_shards + 1).astype(int)
    paths = [os.path.join(output_dir, tfrecord.shard_name(name, i, num_shards))
             for i in range(num_shards)]
    progress = Progress(name, len(items))
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_threads) as pool:
        futures = [pool.submit(_write_one_shard, paths[i], items[bounds[i]:bounds[i + 1]],
                               class_names, skip_unknown, progress) for i in range(num_shards)]
        outcomes = [o for f in futures for o in f.result()]
    for where, record, notes, reason in outcomes:
        if record is None:
            result.skipped.append((where, reason))
            continue
        result.images += 1
        result.objects += len(record.labels)
        result.difficult += sum(record.difficult)
        result.images_without_objects += not record.labels
        result.objects_per_class.update(record.class_names)
        result.repaired.extend((where, note) for note in notes)
    result.shards = paths


def read_annotations(tasks, num_threads):
    """Parse the annotation of every (voc_dir, id); returns ([(voc_dir, id, ann)], [(path, reason)])."""
    def one(task):
        try:
            return task, voc.read_annotation(*task), None
        except voc.BadInput as e:
            return task, None, str(e)

    good, bad = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_threads) as pool:
        for (voc_dir, image_id), annotation, reason in pool.map(one, tasks):
            if annotation is None:
                bad.append((os.path.join(voc_dir, image_id), reason))
            else:
                good.append((voc_dir, image_id, annotation))
    return good, bad


def convert(dataset_dir, output_dir, splits, num_shards, num_threads=4, label_map_path=None,
            skip_unknown=False):
    """Convert named splits, e.g. {'train': [Split('VOC2007', 'trainval')]}, into `output_dir`.

    `num_shards` maps each split name to its shard count. Returns ({name: SplitResult}, class names).
    Raises UnknownClassError (before writing anything) for a class missing from the given label map.
    """
    annotated, results = {}, {}
    for name, split_list in splits.items():
        results[name] = SplitResult()
        tasks, duplicates = list_images(dataset_dir, split_list)
        annotated[name], bad = read_annotations(tasks, num_threads)
        results[name].skipped = duplicates + bad
    seen = sorted({o.name for items in annotated.values() for _, _, a in items for o in a.objects})
    if label_map_path:
        class_names = label_map.read_label_map(label_map_path)
        unknown = [(os.path.join(d, i), o.name) for items in annotated.values()
                   for d, i, a in items for o in a.objects if o.name not in class_names]
        if unknown and not skip_unknown:
            raise UnknownClassError("%d objects of classes not in %s, first: %s has class %r" % (
                len(unknown), label_map_path, unknown[0][0], unknown[0][1]))
    else:
        class_names = tuple(seen)
    label_text = label_map.format_label_map(class_names)  # a name it cannot write fails before any shard
    with atomic.staged_folder(output_dir, why_not_converter_output) as staging:
        for name, items in annotated.items():
            convert_split(name, items, staging, num_shards[name], class_names, skip_unknown,
                          num_threads, results[name])
        atomic.write_atomically(os.path.join(staging, label_map.LABEL_MAP_FILENAME), label_text)
    for result in results.values():
        result.shards = [os.path.join(output_dir, os.path.basename(p)) for p in result.shards]
    return results, class_names


def why_not_converter_output(output_dir):
    """None when the existing folder `output_dir` holds only what a converter writes (VOC or COCO), else
    why a converter may not replace it (atomic.staged_folder refuses it then)."""
    foreign = sorted(n for n in os.listdir(output_dir) if not tfrecord.is_converter_output(n))
    if foreign:
        return "holds files the converter did not write (%s)" % (
            ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else ""))
    return None


def format_summary(results, class_names):
    """Human-readable closing summary: counts per split and class, every skipped or repaired file."""
    lines = []
    for name, r in results.items():
        lines.append("%s: %d images, %d objects (%d difficult), %d images without objects, %d shards"
                     % (name, r.images, r.objects, r.difficult, r.images_without_objects,
                        len(r.shards)))
        lines.append("  objects per class: " + ", ".join(
            "%s %d" % (c, r.objects_per_class[c]) for c in class_names))
        lines.append("  skipped: %d files" % len(r.skipped))
        lines.extend("    %s: %s" % item for item in r.skipped)
        lines.append("  repaired: %d fixes" % len(r.repaired))
        lines.extend("    %s: %s" % item for item in r.repaired)
    return "\n".join(lines)
