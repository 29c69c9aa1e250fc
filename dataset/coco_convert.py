"""COCO instances JSON + image folder per split -> TFRecord shards, label_map.pbtxt, coco_category_map.json.

Two passes, as the VOC converter (dataset/convert.py). First each split's JSON is parsed and every
annotation checked without touching an image (`plan_split`, vectorised: instances_train2017.json's
860k boxes take seconds): which fixes the class list (the categories in increasing COCO id order,
contiguous ids 1..C, dataset/coco.py) and finds every bad entry before anything is written. Then each
shard is built by one worker thread: images are read and validated (dataset/voc.py's load_image) and
records serialized.

Bad input, each case named with its count in the summary (`SplitResult.skipped` / `.repaired`):

    skipped (exit status 3 unless --allow_skips)   malformed entry, duplicate image id (every copy),
                                                  unsafe file_name, annotation of a missing image,
                                                  missing or corrupt image file, image size != JSON
    repaired (the record differs from the JSON)    box with width or height <= 0 (dropped), box
                                                  entirely outside the image (dropped), box partly
                                                  outside (clipped), unknown category with
                                                  --skip_unknown (dropped)
    fatal, before writing (one line, status 2)     not a COCO instances JSON, unknown category without
                                                  --skip_unknown, splits with different categories

Images without annotations are kept as negatives (COCO has about 1% of them) unless keep_empty=False,
which drops the images the JSON lists no annotation for, as the MLPerf SSD reference reads COCO
(utils.py COCODetection: 117,266 of train2017's 118,287 images, 4,952 of val2017's 5,000); an image
whose annotations were all dropped here as degenerate stays, as it does there.
`image/object/area` is the annotation's `area` (COCO's size ranges use it, not the box's) and
`image/object/is_crowd` its `iscrowd`; crowd boxes are kept, for training to ignore and evaluation to
treat as COCO does.

Deterministic: each split's images are ordered by COCO id, shuffled with a fixed seed and cut into
contiguous shards, so the bytes do not depend on the number of threads. Atomic as a whole: every
shard of every split, the label map and the category map are written into a temporary folder beside
the output folder, which then replaces the output folder whole (dataset/atomic.staged_folder, as the
VOC converter does); a failure or a kill leaves the previous output as it was (a rerun removes the
leftovers). The output folder must hold converter output only.
"""

import collections
import concurrent.futures
import dataclasses
import os
import random

import numpy as np
from absl import logging

from dataset import atomic, coco, label_map, tfrecord, voc
from dataset.convert import SHUFFLE_SEED, Progress, why_not_converter_output  # shared with the VOC converter

# Kinds of skipped entries and repairs, as the summary counts them.
MALFORMED = "malformed entry"
DUPLICATE_IMAGE_ID = "duplicate image id"
UNSAFE_FILE_NAME = "unsafe file_name"
MISSING_IMAGE_ENTRY = "annotation of an image not in the JSON (or skipped)"
MISSING_IMAGE_FILE = "missing image file"
BAD_IMAGE = "corrupt or unusable image"
SIZE_MISMATCH = "image size differs from the JSON"
NON_POSITIVE_BOX = "dropped box with width or height <= 0"
OUTSIDE_BOX = "dropped box entirely outside the image"
CLIPPED_BOX = "clipped box partly outside the image"
UNKNOWN_CATEGORY = "dropped box of an unknown category"


class UnknownCategoryError(ValueError):
    """An annotation whose category_id is not in the categories (and --skip_unknown was not set)."""


class CategoryMismatchError(ValueError):
    """Splits whose JSON files list different categories (their contiguous ids would disagree)."""


@dataclasses.dataclass(frozen=True)
class CocoSplit:
    """One instances JSON and the folder its `file_name`s are relative to."""
    annotations_file: str
    images_dir: str


@dataclasses.dataclass
class SplitResult:
    """What happened to one output split; skipped and repaired hold (kind, where, detail) triples."""
    images: int = 0
    objects: int = 0
    crowd: int = 0
    images_without_objects: int = 0
    empty_images_dropped: int = 0
    objects_per_class: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: list = dataclasses.field(default_factory=list)
    repaired: list = dataclasses.field(default_factory=list)
    shards: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Plan:
    """A validated split, images in COCO id order. Image i's boxes are rows starts[i]:starts[i + 1].

    image_ids, widths, heights int64 [N]; file_names [N]; starts int64 [N + 1];
    boxes float32 [K, 4] normalized yxyx; labels int64 [K] 1..C; areas float64 [K]; is_crowd bool [K].
    """
    image_ids: np.ndarray
    file_names: list
    widths: np.ndarray
    heights: np.ndarray
    starts: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    is_crowd: np.ndarray

    @property
    def num_images(self):
        return len(self.image_ids)


def _safe_file_name(name):
    parts = name.replace("\\", "/").split("/")
    return bool(name) and not os.path.isabs(name) and all(p not in ("", ".", "..") for p in parts)


def plan_split(instances, category_map, annotations_file, result, skip_unknown=False, keep_empty=True):
    """Validate parsed `instances` (coco.load_instances) against `category_map`; returns a Plan.

    Every bad entry goes to result.skipped or result.repaired. Raises UnknownCategoryError, naming
    the count and the first annotation, when a category_id is unknown and not `skip_unknown`.
    """
    for what, reason in instances.malformed:
        result.skipped.append((MALFORMED, "%s %s" % (annotations_file, what), reason))

    # Images: drop every copy of a repeated id (which copy the annotations meant is unknowable).
    ids = instances.image_ids
    unique, counts = np.unique(ids, return_counts=True)
    repeated = set(unique[counts > 1].tolist())
    keep = np.ones(len(ids), dtype=bool)
    for i, image_id in enumerate(ids.tolist()):
        name = instances.file_names[i]
        if image_id in repeated:
            keep[i] = False
            result.skipped.append((DUPLICATE_IMAGE_ID, "%s image %d" % (annotations_file, image_id),
                                   "listed %d times" % counts[np.searchsorted(unique, image_id)]))
        elif not _safe_file_name(name):
            keep[i] = False
            result.skipped.append((UNSAFE_FILE_NAME, "%s image %d" % (annotations_file, image_id),
                                   "file_name %r is not a relative path inside the image folder" % name))
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(ids[kept], kind="stable")]
    image_ids, widths, heights = ids[kept], instances.widths[kept], instances.heights[kept]
    file_names = [instances.file_names[i] for i in kept]

    # Annotations: to image positions (in the id-sorted list); unknown images are skipped.
    if len(image_ids):
        position = np.minimum(np.searchsorted(image_ids, instances.ann_image_ids), len(image_ids) - 1)
        found = image_ids[position] == instances.ann_image_ids
    else:
        position = np.zeros(len(instances.ann_image_ids), dtype=np.int64)
        found = np.zeros(len(position), dtype=bool)
    for k in np.flatnonzero(~found):
        result.skipped.append((MISSING_IMAGE_ENTRY, "%s annotation %d" % (annotations_file,
                                                                          instances.ann_ids[k]),
                               "image id %d" % instances.ann_image_ids[k]))

    labels = category_map.contiguous_ids(instances.ann_category_ids)
    unknown = found & (labels == 0)
    if unknown.any():
        first = np.flatnonzero(unknown)[0]
        if not skip_unknown:
            raise UnknownCategoryError(
                "%s: %d annotations of categories not in its categories list, first: annotation %d "
                "has category_id %d" % (annotations_file, unknown.sum(), instances.ann_ids[first],
                                        instances.ann_category_ids[first]))
        for k in np.flatnonzero(unknown):
            result.repaired.append((UNKNOWN_CATEGORY, file_names[position[k]], "annotation %d: "
                                    "category_id %d" % (instances.ann_ids[k], instances.ann_category_ids[k])))

    # Boxes in pixels, clipped to the image ([0, W] x [0, H]: COCO pixels are continuous, no +1).
    box = instances.ann_boxes
    w_img = widths[position].astype(np.float64) if len(image_ids) else np.zeros(len(box))
    h_img = heights[position].astype(np.float64) if len(image_ids) else np.zeros(len(box))
    x0, y0 = np.maximum(box[:, 0], 0.0), np.maximum(box[:, 1], 0.0)
    x1, y1 = np.minimum(box[:, 0] + box[:, 2], w_img), np.minimum(box[:, 1] + box[:, 3], h_img)
    candidate = found & ~unknown
    non_positive = candidate & ((box[:, 2] <= 0) | (box[:, 3] <= 0))
    outside = candidate & ~non_positive & ((x1 <= x0) | (y1 <= y0))
    good = candidate & ~non_positive & ~outside
    clipped = good & ((x0 != box[:, 0]) | (y0 != box[:, 1]) | (x1 != box[:, 0] + box[:, 2])
                      | (y1 != box[:, 1] + box[:, 3]))
    for kind, mask in ((NON_POSITIVE_BOX, non_positive), (OUTSIDE_BOX, outside), (CLIPPED_BOX, clipped)):
        for k in np.flatnonzero(mask):
            p = position[k]
            result.repaired.append((kind, file_names[p], "annotation %d bbox %s in the %dx%d image" % (
                instances.ann_ids[k], [round(v, 2) for v in box[k].tolist()], widths[p], heights[p])))

    # Group the good annotations by image, file order within an image.
    rows = np.flatnonzero(good)
    rows = rows[np.argsort(position[rows], kind="stable")]
    starts = np.searchsorted(position[rows], np.arange(len(image_ids) + 1))
    pixel_xywh = np.stack([x0[rows], y0[rows], x1[rows] - x0[rows], y1[rows] - y0[rows]], axis=1)
    plan = Plan(image_ids=image_ids, file_names=file_names, widths=widths, heights=heights,
                starts=starts, boxes=coco.coco_xywh_to_normalized(pixel_xywh, w_img[rows], h_img[rows]),
                labels=labels[rows], areas=instances.ann_areas[rows],
                is_crowd=instances.ann_is_crowd[rows])
    if not keep_empty:
        annotated = np.bincount(position[found], minlength=len(image_ids)) > 0
        plan, result.empty_images_dropped = _without_empty_images(plan, annotated)
    return plan


def _without_empty_images(plan, annotated):
    """`plan` without the images not `annotated` (bool [images]), and how many were dropped."""
    counts = np.diff(plan.starts)
    keep = np.flatnonzero(annotated)
    return dataclasses.replace(
        plan, image_ids=plan.image_ids[keep], file_names=[plan.file_names[i] for i in keep],
        widths=plan.widths[keep], heights=plan.heights[keep],
        starts=np.concatenate([[0], np.cumsum(counts[keep])])), int((~annotated).sum())


def build_record(plan, i, images_dir, class_names):
    """Load and validate image i of `plan`; returns (ImageRecord, repair notes). Raises voc.BadInput
    (with the kind of problem as its first argument)."""
    path = os.path.join(images_dir, plan.file_names[i])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise voc.BadInput(MISSING_IMAGE_FILE, path) from None
    except OSError as e:
        raise voc.BadInput(BAD_IMAGE, "%s: %s" % (path, e)) from None
    try:
        loaded = voc.load_image(data)
    except voc.BadInput as e:
        raise voc.BadInput(BAD_IMAGE, "%s: %s" % (path, e)) from None
    width, height = int(plan.widths[i]), int(plan.heights[i])
    if (loaded.width, loaded.height) != (width, height):
        # COCO boxes are pixels of the image the JSON describes; another size means another image.
        raise voc.BadInput(SIZE_MISMATCH, "%s is %dx%d, the JSON says %dx%d" % (
            path, loaded.width, loaded.height, width, height))
    rows = slice(plan.starts[i], plan.starts[i + 1])
    labels = tuple(int(v) for v in plan.labels[rows])
    n = len(labels)
    record = tfrecord.ImageRecord(
        image_id=str(int(plan.image_ids[i])), filename=plan.file_names[i], jpeg=loaded.jpeg,
        width=width, height=height, boxes=plan.boxes[rows], labels=labels,
        class_names=tuple(class_names[k - 1] for k in labels), difficult=(0,) * n,
        truncated=(0,) * n, poses=(), is_crowd=tuple(int(v) for v in plan.is_crowd[rows]),
        areas=plan.areas[rows])
    return record, [(kind, plan.file_names[i], "") for kind in loaded.repairs]


def _write_one_shard(path, plan, indices, images_dir, class_names, progress):
    """Build and write one shard; returns per-image outcomes [(i, record|None, notes, (kind, detail))]."""
    outcomes = []

    def serialized():
        for i in indices:
            try:
                record, notes = build_record(plan, i, images_dir, class_names)
            except voc.BadInput as e:
                outcomes.append((i, None, [], e.args))
            else:
                outcomes.append((i, record, notes, None))
                yield tfrecord.serialize(tfrecord.build_example(record))
            progress.add()

    tfrecord.write_shard(path, serialized())
    return outcomes


def write_split(name, plan, images_dir, staging_dir, num_shards, class_names, num_threads, result):
    """Shuffle the plan's images with a fixed seed and write `num_shards` shards into `staging_dir`."""
    order = list(range(plan.num_images))
    random.Random(SHUFFLE_SEED).shuffle(order)
    bounds = np.linspace(0, len(order), num_shards + 1).astype(int)
    paths = [os.path.join(staging_dir, tfrecord.shard_name(name, s, num_shards))
             for s in range(num_shards)]
    progress = Progress(name, len(order))
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_threads) as pool:
        futures = [pool.submit(_write_one_shard, paths[s], plan, order[bounds[s]:bounds[s + 1]],
                               images_dir, class_names, progress) for s in range(num_shards)]
        outcomes = [o for f in futures for o in f.result()]
    for i, record, notes, problem in outcomes:
        if record is None:
            kind, detail = problem
            result.skipped.append((kind, "image %d" % plan.image_ids[i], detail))
            continue
        result.images += 1
        result.objects += len(record.labels)
        result.crowd += sum(record.is_crowd)
        result.images_without_objects += not record.labels
        result.objects_per_class.update(record.class_names)
        result.repaired.extend(notes)
    return paths


def convert(splits, output_dir, num_shards, num_threads=4, skip_unknown=False, keep_empty=True):
    """Convert named splits, e.g. {'train': CocoSplit(json, folder)}, into `output_dir`.

    `num_shards` maps each split name to its shard count. Returns ({name: SplitResult}, CategoryMap).
    Raises coco.NotInstancesError, UnknownCategoryError or CategoryMismatchError before writing.
    """
    results, plans, category_map = {}, {}, None
    for name, split in splits.items():
        logging.info("%s: parsing %s", name, split.annotations_file)
        instances = coco.load_instances(split.annotations_file)
        this_map = coco.CategoryMap.from_categories(instances.categories)
        if category_map is not None and this_map != category_map:
            raise CategoryMismatchError("%s lists other categories than the earlier split's JSON"
                                        % split.annotations_file)
        category_map = this_map
        results[name] = SplitResult()
        plans[name] = plan_split(instances, category_map, split.annotations_file, results[name],
                                 skip_unknown, keep_empty)
        del instances
    # The output set is replaced as a whole, as the VOC converter does (dataset/convert.py).
    with atomic.staged_folder(output_dir, why_not_converter_output) as staging:
        label_map.write_label_map(os.path.join(staging, label_map.LABEL_MAP_FILENAME),
                                  category_map.names)
        coco.write_category_map(staging, category_map)
        staged = {name: write_split(name, plans[name], splits[name].images_dir, staging,
                                    num_shards[name], category_map.names, num_threads, results[name])
                  for name in splits}
    for name, paths in staged.items():
        results[name].shards = [os.path.join(output_dir, os.path.basename(p)) for p in paths]
    return results, category_map


def _grouped(entries, max_listed):
    lines = []
    by_kind = collections.defaultdict(list)
    for kind, where, detail in entries:
        by_kind[kind].append((where, detail))
    for kind, items in sorted(by_kind.items()):
        lines.append("    %s: %d" % (kind, len(items)))
        for where, detail in items[:max_listed]:
            lines.append("      %s%s" % (where, ": " + detail if detail else ""))
        if len(items) > max_listed:
            lines.append("      ... and %d more" % (len(items) - max_listed))
    return lines


def format_summary(results, category_map, max_listed=20):
    """Closing summary: counts per split and class, and every kind of skip or repair with examples."""
    lines = []
    for name, r in results.items():
        lines.append("%s: %d images, %d objects (%d crowd), %d images without objects%s, %d shards" % (
            name, r.images, r.objects, r.crowd, r.images_without_objects,
            " (%d more dropped)" % r.empty_images_dropped if r.empty_images_dropped else "",
            len(r.shards)))
        lines.append("  objects per class: " + ", ".join(
            "%s %d" % (c, r.objects_per_class[c]) for c in category_map.names))
        lines.append("  skipped: %d" % len(r.skipped))
        lines.extend(_grouped(r.skipped, max_listed))
        lines.append("  repaired: %d" % len(r.repaired))
        lines.extend(_grouped(r.repaired, max_listed))
    return "\n".join(lines)
