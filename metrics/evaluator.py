"""Accumulates per-image ground truth and detections, then computes VOC and COCO metrics at once.

The eval script feeds it one image at a time (numpy, after post-processing) and every image exactly
once: a repeated image id raises, because a double-counted or missing image silently shifts mAP.

Boxes arrive normalized [ymin, xmin, ymax, xmax] and are turned into pixels only here, at the edge:
VOC metrics and files use dataset.voc_boxes.normalized_to_voc_pixels (1-based inclusive pixels,
which gives back the XML coordinates exactly), COCO uses metrics.coco.normalized_to_coco_xywh.

COCO records (a dataset.coco.CategoryMap given): image ids are the decimal COCO image ids, classes
map back to COCO category ids, ground-truth areas are the annotations' `area` and crowd boxes are
COCO's `iscrowd`; the results JSON then carries the original ids and is submittable alone, and
`evaluate(annotations_file=...)` scores against the official file instead of the records. In the VOC
metrics crowd boxes count as difficult (neither counted nor penalised), the closest VOC rule.

`evaluate` returns plain Python values (JSON-serialisable with allow_nan=False): an AP that is
undefined (a class without non-difficult ground truth, a COCO size range without objects) is None.
"""

import dataclasses
import math

import numpy as np

from dataset.voc_boxes import normalized_to_voc_pixels
from metrics import coco, result_files, voc

METRIC_NAMES = ("voc07", "voc12", "coco")


@dataclasses.dataclass(frozen=True)
class EvaluationSet:
    """Every added image flattened into arrays; index k is the k-th added image.

    image_ids [N] str, heights [N] int, widths [N] int;
    gt_image_index [G] int, gt_boxes [G, 4] normalized yxyx, gt_labels [G] int, gt_difficult [G] bool,
    gt_is_crowd [G] bool, gt_area [G] float pixels;
    det_image_index [K] int, det_boxes [K, 4] normalized yxyx, det_scores [K] float, det_classes [K] int.
    """
    image_ids: tuple
    heights: np.ndarray
    widths: np.ndarray
    gt_image_index: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray
    gt_is_crowd: np.ndarray
    gt_area: np.ndarray
    det_image_index: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_classes: np.ndarray

    @property
    def gt_ignored(self):
        """[G] bool: boxes neither counted nor penalised (VOC difficult, COCO crowd)."""
        return self.gt_difficult | self.gt_is_crowd

    def gt_voc_pixels(self):
        idx = self.gt_image_index
        return normalized_to_voc_pixels(self.gt_boxes, self.widths[idx], self.heights[idx])

    def det_voc_pixels(self):
        idx = self.det_image_index
        return normalized_to_voc_pixels(self.det_boxes, self.widths[idx], self.heights[idx])

    def gt_coco_xywh(self):
        idx = self.gt_image_index
        return coco.normalized_to_coco_xywh(self.gt_boxes, self.widths[idx], self.heights[idx])

    def det_coco_xywh(self):
        idx = self.det_image_index
        return coco.normalized_to_coco_xywh(self.det_boxes, self.widths[idx], self.heights[idx])


def _undefined_to_none(value):
    return None if math.isnan(value) else float(value)


def _checked(image_id, name, array, dtype, shape_tail, length=None):
    array = np.asarray(array, dtype=dtype)
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        raise ValueError("image %r: %s has shape %s, expected [N%s]"
                         % (image_id, name, array.shape, "".join(", %d" % d for d in shape_tail)))
    if length is not None and array.shape[0] != length:
        raise ValueError("image %r: %s has %d rows, expected %d" % (image_id, name, array.shape[0], length))
    return array


def load_official_ground_truth(annotations_file, category_map):
    """pycocotools ground truth of an official instances JSON, checked against the records' map.

    Raises ValueError (one line) without COCO records (`category_map` None), for a missing or
    non-instances file, or when its categories are not the map's.
    """
    if category_map is None:
        raise ValueError("--annotations_file needs COCO records (a coco_category_map.json beside "
                         "them); these are not")
    coco_gt = coco.load_ground_truth(annotations_file)
    in_file = {int(c["id"]): c["name"] for c in coco_gt.dataset["categories"]}
    if in_file != dict(zip(category_map.coco_ids, category_map.names)):
        raise ValueError(f"--annotations_file {annotations_file}: its categories differ from the "
                         "records' coco_category_map.json")
    return coco_gt


class DetectionEvaluator:
    """VOC07, VOC2010+ and COCO metrics over images added one by one.

    Args:
      class_names: C names from the label map; name i is class id i + 1.
      category_map: dataset.coco.CategoryMap for COCO records (see the module docstring), else None.
    """

    def __init__(self, class_names, category_map=None):
        self.class_names = tuple(class_names)
        if category_map is not None and tuple(category_map.names) != self.class_names:
            raise ValueError("the COCO category map names %s, the label map %s"
                             % (category_map.names, self.class_names))
        self.category_map = category_map
        self._images = []  # (image_id, height, width, gt_boxes, gt_labels, gt_difficult, det_*)
        self._seen_ids = set()

    @property
    def num_images(self):
        return len(self._images)

    def add(self, image_id, height, width, gt_boxes, gt_labels, gt_difficult,
            det_boxes, det_scores, det_classes, gt_is_crowd=None, gt_area=None):
        """Adds one image.

        Args:
          image_id: str, unique over the evaluation (e.g. VOC "000001"; COCO records: "139").
          height, width: original image size in pixels.
          gt_boxes [G, 4] normalized yxyx, gt_labels [G] int (1..C), gt_difficult [G] bool.
          det_boxes [K, 4] normalized yxyx, det_scores [K], det_classes [K] int (1..C), already
            trimmed to the number of valid detections.
          gt_is_crowd: [G] bool (COCO iscrowd), default all False.
          gt_area: [G] float pixels (COCO annotation area), default the boxes' areas.
        """
        if not isinstance(image_id, str):
            raise TypeError("image id must be a str, got %r" % (image_id,))
        if image_id in self._seen_ids:
            raise ValueError("image %r added twice: the evaluation must see every image once" % image_id)
        if int(height) <= 0 or int(width) <= 0:
            raise ValueError("image %r: size %sx%s is not positive" % (image_id, height, width))
        gt_boxes = _checked(image_id, "gt_boxes", gt_boxes, np.float32, (4,))
        num_gt = gt_boxes.shape[0]
        gt_labels = _checked(image_id, "gt_labels", gt_labels, np.int64, (), num_gt)
        gt_difficult = _checked(image_id, "gt_difficult", gt_difficult, bool, (), num_gt)
        gt_is_crowd = _checked(image_id, "gt_is_crowd", np.zeros(num_gt, bool) if gt_is_crowd is None
                               else gt_is_crowd, bool, (), num_gt)
        if gt_area is None:
            b = gt_boxes.astype(np.float64)
            gt_area = (b[:, 2] - b[:, 0]) * int(height) * (b[:, 3] - b[:, 1]) * int(width)
        gt_area = _checked(image_id, "gt_area", gt_area, np.float64, (), num_gt)
        if self.category_map is not None and not image_id.isdigit():
            raise ValueError("image %r: COCO records need decimal COCO image ids" % image_id)
        det_boxes = _checked(image_id, "det_boxes", det_boxes, np.float32, (4,))
        num_det = det_boxes.shape[0]
        det_scores = _checked(image_id, "det_scores", det_scores, np.float32, (), num_det)
        det_classes = _checked(image_id, "det_classes", det_classes, np.int64, (), num_det)
        num_classes = len(self.class_names)
        for name, labels in (("gt_labels", gt_labels), ("det_classes", det_classes)):
            bad = labels[(labels < 1) | (labels > num_classes)]
            if bad.size:
                raise ValueError("image %r: %s %s outside 1..%d" % (image_id, name, bad.tolist(), num_classes))
        for name, values in (("gt_boxes", gt_boxes), ("gt_area", gt_area), ("det_boxes", det_boxes),
                             ("det_scores", det_scores)):
            if not np.all(np.isfinite(values)):
                raise ValueError("image %r: %s has non-finite values" % (image_id, name))
        self._seen_ids.add(image_id)
        self._images.append((image_id, int(height), int(width), gt_boxes, gt_labels, gt_difficult,
                             gt_is_crowd, gt_area, det_boxes, det_scores, det_classes))

    def evaluation_set(self):
        """Everything added so far, flattened (see EvaluationSet)."""
        if not self._images:
            raise ValueError("no images were added")
        (ids, heights, widths, gt_boxes, gt_labels, gt_difficult, gt_is_crowd, gt_area, det_boxes,
         det_scores, det_classes) = zip(*self._images)
        return EvaluationSet(
            image_ids=ids, heights=np.array(heights), widths=np.array(widths),
            gt_image_index=np.repeat(np.arange(len(ids)), [len(g) for g in gt_labels]),
            gt_boxes=np.concatenate(gt_boxes), gt_labels=np.concatenate(gt_labels),
            gt_difficult=np.concatenate(gt_difficult), gt_is_crowd=np.concatenate(gt_is_crowd),
            gt_area=np.concatenate(gt_area),
            det_image_index=np.repeat(np.arange(len(ids)), [len(d) for d in det_classes]),
            det_boxes=np.concatenate(det_boxes), det_scores=np.concatenate(det_scores),
            det_classes=np.concatenate(det_classes))

    def coco_image_ids(self, data):
        """[N] COCO image ids of the evaluated images: the original ids of COCO records, else k + 1."""
        if self.category_map is None:
            return coco.coco_image_id(np.arange(len(data.image_ids)))
        return np.array([int(i) for i in data.image_ids], dtype=np.int64)

    def coco_category_ids(self):
        """[C] COCO category id of each class: the COCO ids of COCO records, else 1..C."""
        if self.category_map is None:
            return np.arange(1, len(self.class_names) + 1)
        return np.asarray(self.category_map.coco_ids, dtype=np.int64)

    def evaluate(self, metrics=METRIC_NAMES, annotations_file=None):
        """Computes the requested metrics over all added images.

        `annotations_file` (COCO records only): an official instances JSON to score the COCO numbers
        against instead of the records' ground truth; its categories must be the category map's.

        Returns:
          {"num_images": int, "num_detections": int,
           "num_positives": {class name: non-difficult gts},
           "voc07"/"voc12": {"mAP": float|None, "AP": {class name: float|None}},
           "coco": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
                    "ARm", "ARl": float|None}}, with only the requested metric keys.
        """
        unknown = set(metrics) - set(METRIC_NAMES)
        if unknown:
            raise ValueError("unknown metrics %s; known: %s" % (sorted(unknown), METRIC_NAMES))
        data = self.evaluation_set()
        positives = np.bincount(data.gt_labels[~data.gt_ignored], minlength=len(self.class_names) + 1)
        results = {"num_images": len(data.image_ids), "num_detections": int(data.det_scores.size),
                   "num_positives": {name: int(positives[i + 1]) for i, name in enumerate(self.class_names)}}
        voc_metrics = [m for m in metrics if m in ("voc07", "voc12")]
        if voc_metrics:
            aps = voc.voc_average_precisions(
                len(self.class_names), data.det_image_index, data.det_classes, data.det_scores,
                data.det_voc_pixels(), data.gt_image_index, data.gt_labels, data.gt_ignored,
                data.gt_voc_pixels())
            for metric in voc_metrics:
                results[metric] = {
                    "mAP": _undefined_to_none(voc.mean_average_precision(aps[metric])),
                    "AP": {name: _undefined_to_none(ap) for name, ap in zip(self.class_names, aps[metric])}}
        if "coco" in metrics:
            image_ids, category_ids = self.coco_image_ids(data), self.coco_category_ids()
            if annotations_file:
                coco_gt = self._official_ground_truth(annotations_file)
            else:
                coco_gt = coco.build_ground_truth(
                    self.class_names, data.heights, data.widths, data.gt_image_index, data.gt_labels,
                    data.gt_ignored, data.gt_coco_xywh(), gt_areas=data.gt_area, image_ids=image_ids,
                    category_ids=category_ids)
            numbers = coco.coco_metrics(coco_gt, data.det_image_index, data.det_classes,
                                        data.det_scores, data.det_coco_xywh(), image_ids=image_ids,
                                        category_ids=category_ids)
            results["coco"] = {name: _undefined_to_none(v) for name, v in numbers.items()}
        return results

    def _official_ground_truth(self, annotations_file):
        return load_official_ground_truth(annotations_file, self.category_map)

    def format_table(self, results):
        """Human-readable per-class table of a result dict from `evaluate` (see `format_table`)."""
        return format_table(results, self.class_names)

    def write_results(self, output_dir):
        """VOC devkit comp4 files and the COCO results JSON in `output_dir` (plus the image id map for
        non-COCO records, whose COCO ids are positions); returns the paths."""
        data = self.evaluation_set()
        paths = result_files.write_voc_result_files(
            output_dir, self.class_names, data.image_ids, data.det_image_index, data.det_classes,
            data.det_scores, data.det_voc_pixels())
        paths.extend(result_files.write_coco_results(
            output_dir, data.image_ids, data.det_image_index, data.det_classes, data.det_scores,
            data.det_coco_xywh(),
            coco_image_ids=None if self.category_map is None else self.coco_image_ids(data),
            category_ids=None if self.category_map is None else self.coco_category_ids()))
        return paths


def format_table(results, class_names):
    """Human-readable per-class table of a result dict from DetectionEvaluator.evaluate."""
    def cell(value):
        return "%8s" % ("n/a" if value is None else "%.4f" % value)

    voc_metrics = [m for m in ("voc07", "voc12") if m in results]
    width = max([len("mAP")] + [len(n) for n in class_names])
    lines = ["%-*s %8s" % (width, "class", "num_gt") + "".join("%9s" % m for m in voc_metrics)]
    for name in class_names:
        lines.append("%-*s %8d" % (width, name, results["num_positives"][name])
                     + "".join(" " + cell(results[m]["AP"][name]) for m in voc_metrics))
    lines.append("%-*s %8d" % (width, "mAP", sum(results["num_positives"].values()))
                 + "".join(" " + cell(results[m]["mAP"]) for m in voc_metrics))
    if "coco" in results:
        lines.append("COCO: " + "  ".join("%s %s" % (k, cell(v).strip())
                                          for k, v in results["coco"].items()))
    lines.append("(%d images, %d detections)" % (results["num_images"], results["num_detections"]))
    return "\n".join(lines)
