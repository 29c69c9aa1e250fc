"""COCO box metrics (AP over IoU 0.50:0.95, AP50, AP75, by object size, and AR) through pycocotools.

COCO boxes are [x, y, width, height] in continuous pixels with the origin at the image's top-left
corner, so a normalized box maps by plain scaling (`normalized_to_coco_xywh`, dataset/coco.py, where
the convention is stated); no +1 as in VOC.

Image ids: COCO wants integers. COCO records carry their original ids (passed as `image_ids`), and
their contiguous classes map back to COCO category ids (`category_ids`, from dataset.coco.CategoryMap).
Other records get ids k + 1 for image k (0-based, in the order the evaluator saw them,
`coco_image_id`) and category ids 1..C. Annotation ids start at 1 as well: COCOeval stores matched
ids in arrays that use 0 for "unmatched", so an id of 0 would silently never count as matched.

Ground truth comes from the records (`build_ground_truth`: their boxes, the annotations' `area` for
the small/medium/large split, and `iscrowd`) or from the official file itself (`load_ground_truth`,
e.g. instances_val2017.json); `coco_metrics` then evaluates exactly the images that were evaluated
(COCOeval's params.imgIds), so both routes score the same set and give the same numbers when the
records hold the file's annotations (tests/test_coco_evaluation.py).

Difficult VOC objects: COCO has no such flag. They are given as `iscrowd=1`, COCO's own "ignore
region": they are not counted as ground truth, and detections that match them are ignored rather
than counted as false positives — the VOC devkit's treatment. Two COCO details differ: a crowd box
is matched by intersection over the detection's area (not over the union), and it can absorb any
number of detections. (pycocotools overwrites an `ignore` field with `iscrowd`, so `iscrowd` is the
only working switch.)

Undefined numbers: pycocotools reports -1 where a number has no ground truth (e.g. APs on a set
without small objects); we report NaN there, the same convention as metrics/voc.py.
"""

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dataset.coco import normalized_to_coco_xywh  # noqa: F401  (part of this module's API)

# The names of COCOeval.stats, in its order (maxDets 100 for the AP and size-wise AR numbers).
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                     "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# Value pycocotools puts in `stats` for a number without ground truth.
_COCO_UNDEFINED = -1.0


def coco_image_id(image_index):
    """COCO integer image id of the image at 0-based position `image_index` (int or int array)."""
    return image_index + 1


def _quiet_coco(dataset):
    """A COCO object built from an in-memory dataset dict, without pycocotools' prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def build_ground_truth(class_names, image_heights, image_widths, gt_image_index, gt_classes,
                       gt_difficult, gt_boxes_xywh, gt_areas=None, image_ids=None, category_ids=None):
    """An in-memory pycocotools ground-truth object.

    Args:
      class_names: C names; name i is class id i + 1.
      image_heights, image_widths: [N] int original image sizes.
      gt_image_index [G] int, gt_classes [G] int (1..C), gt_difficult [G] bool (given as `iscrowd`:
        COCO crowd boxes, VOC difficult boxes), gt_boxes_xywh [G, 4] COCO pixels.
      gt_areas: [G] pixels (COCO's annotation `area`); default the boxes' areas.
      image_ids: [N] COCO image ids; default k + 1 for image k.
      category_ids: [C] COCO category id of each class; default 1..C.
    """
    boxes = np.asarray(gt_boxes_xywh, dtype=np.float64).reshape(-1, 4)
    areas = boxes[:, 2] * boxes[:, 3] if gt_areas is None else np.asarray(gt_areas, np.float64)
    image_ids = _image_ids(image_ids, len(image_heights))
    category_ids = _category_ids(category_ids, len(class_names))
    images = [{"id": int(image_ids[k]), "height": int(h), "width": int(w)}
              for k, (h, w) in enumerate(zip(image_heights, image_widths))]
    annotations = [{"id": i + 1, "image_id": int(image_ids[image]),
                    "category_id": int(category_ids[label - 1]), "bbox": box.tolist(),
                    "area": float(area), "iscrowd": int(difficult)}
                   for i, (image, label, difficult, box, area)
                   in enumerate(zip(gt_image_index, gt_classes, gt_difficult, boxes, areas))]
    categories = [{"id": int(i), "name": name} for i, name in zip(category_ids, class_names)]
    return _quiet_coco({"images": images, "annotations": annotations, "categories": categories})


def _image_ids(image_ids, num_images):
    if image_ids is None:
        return coco_image_id(np.arange(num_images))
    return np.asarray(image_ids, dtype=np.int64)


def _category_ids(category_ids, num_classes):
    if category_ids is None:
        return np.arange(1, num_classes + 1)
    return np.asarray(category_ids, dtype=np.int64)


def load_ground_truth(annotations_file):
    """pycocotools ground truth from an official instances JSON (e.g. instances_val2017.json).

    Raises ValueError with one line naming the file when it is missing or not COCO instances.
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(annotations_file)
    except FileNotFoundError:
        raise ValueError(f"--annotations_file {annotations_file}: file not found") from None
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise ValueError(f"--annotations_file {annotations_file}: not a COCO instances file ({e})") from None
    if "annotations" not in coco.dataset or "categories" not in coco.dataset:
        raise ValueError(f"--annotations_file {annotations_file}: not a COCO instances file "
                         "(no annotations or categories)")
    return coco


def _load_detections(coco_gt, det_image_ids, det_category_ids, det_scores, det_boxes_xywh):
    """pycocotools results object; built by hand when empty (loadRes fails on an empty list)."""
    num_dets = len(det_scores)
    if num_dets == 0:
        return _quiet_coco({"images": list(coco_gt.dataset["images"]), "annotations": [],
                            "categories": list(coco_gt.dataset["categories"])})
    # loadRes's [N, 7] array form: image id, x, y, w, h, score, category id.
    rows = np.concatenate([
        np.asarray(det_image_ids, dtype=np.float64).reshape(-1, 1),
        np.asarray(det_boxes_xywh, dtype=np.float64).reshape(-1, 4),
        np.asarray(det_scores, dtype=np.float64).reshape(-1, 1),
        np.asarray(det_category_ids, dtype=np.float64).reshape(-1, 1)], axis=1)
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(rows)


def coco_metrics(coco_gt, det_image_index, det_classes, det_scores, det_boxes_xywh, image_ids=None,
                 category_ids=None):
    """The 12 COCO box numbers for the detections against `coco_gt`.

    Args:
      coco_gt: from `build_ground_truth` (with the same image_ids and category_ids) or
        `load_ground_truth`.
      det_image_index [K] int (0-based image position), det_classes [K] int (1..C),
      det_scores [K] float, det_boxes_xywh [K, 4] COCO pixels.
      image_ids: [N] COCO id of each evaluated image; default k + 1. Only these images are scored;
        each must be in `coco_gt`.
      category_ids: [C] COCO category id of each class; default 1..C.
    Returns:
      {name: float} for every name in COCO_METRIC_NAMES; NaN where pycocotools reports -1.
    """
    det_image_index = np.asarray(det_image_index, dtype=np.int64).reshape(-1)
    det_classes = np.asarray(det_classes, dtype=np.int64).reshape(-1)
    if image_ids is None:
        image_ids = [image["id"] for image in coco_gt.dataset["images"]]
        det_image_ids = coco_image_id(det_image_index)
    else:
        image_ids = np.asarray(image_ids, dtype=np.int64)
        det_image_ids = image_ids[det_image_index]
        missing = sorted(set(image_ids.tolist()) - set(coco_gt.getImgIds()))
        if missing:
            raise ValueError(f"{len(missing)} evaluated images are not in the ground truth file, "
                             f"first ids: {missing[:5]}")
    det_category_ids = (det_classes if category_ids is None
                        else np.asarray(category_ids, dtype=np.int64)[det_classes - 1])
    coco_dt = _load_detections(coco_gt, det_image_ids, det_category_ids, det_scores, det_boxes_xywh)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluator.params.imgIds = sorted(int(i) for i in image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (float("nan") if value == _COCO_UNDEFINED else float(value))
            for name, value in zip(COCO_METRIC_NAMES, evaluator.stats)}
