"""COCO box metrics (AP over IoU 0.50:0.95, AP50, AP75, by object size, and AR) through pycocotools.

COCO boxes are [x, y, width, height] in continuous pixels with the origin at the image's top-left
corner, so a normalized box maps by plain scaling (`normalized_to_coco_xywh`); no +1 as in VOC.

Image ids: COCO wants integers, so image k (0-based, in the order the evaluator saw them) has COCO id
k + 1 (`coco_image_id`). Annotation ids start at 1 as well: COCOeval stores matched ids in arrays that
use 0 for "unmatched", so an id of 0 would silently never count as matched.

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

# The names of COCOeval.stats, in its order (maxDets 100 for the AP and size-wise AR numbers).
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                     "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# Value pycocotools puts in `stats` for a number without ground truth.
_COCO_UNDEFINED = -1.0


def normalized_to_coco_xywh(boxes, width, height):
    """Normalized yxyx [N, 4] -> COCO [x, y, w, h] pixels [N, 4] float64.

    `width`/`height` may be scalars or arrays broadcastable to [N] (one original size per box).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    width = np.asarray(width, dtype=np.float64)
    height = np.asarray(height, dtype=np.float64)
    return np.stack([b[:, 1] * width, b[:, 0] * height,
                     (b[:, 3] - b[:, 1]) * width, (b[:, 2] - b[:, 0]) * height], axis=1)


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
                       gt_difficult, gt_boxes_xywh):
    """An in-memory pycocotools ground-truth object.

    Args:
      class_names: C names; name i is category id i + 1.
      image_heights, image_widths: [N] int original image sizes (image k gets COCO id k + 1).
      gt_image_index [G] int, gt_classes [G] int (1..C), gt_difficult [G] bool,
      gt_boxes_xywh [G, 4] COCO pixels.
    """
    boxes = np.asarray(gt_boxes_xywh, dtype=np.float64).reshape(-1, 4)
    images = [{"id": int(coco_image_id(k)), "height": int(h), "width": int(w)}
              for k, (h, w) in enumerate(zip(image_heights, image_widths))]
    annotations = [{"id": i + 1, "image_id": int(coco_image_id(image)), "category_id": int(label),
                    "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": int(difficult)}
                   for i, (image, label, difficult, box)
                   in enumerate(zip(gt_image_index, gt_classes, gt_difficult, boxes))]
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return _quiet_coco({"images": images, "annotations": annotations, "categories": categories})


def _load_detections(coco_gt, det_image_index, det_classes, det_scores, det_boxes_xywh):
    """pycocotools results object; built by hand when empty (loadRes fails on an empty list)."""
    num_dets = len(det_scores)
    if num_dets == 0:
        return _quiet_coco({"images": list(coco_gt.dataset["images"]), "annotations": [],
                            "categories": list(coco_gt.dataset["categories"])})
    # loadRes's [N, 7] array form: image id, x, y, w, h, score, category id.
    rows = np.concatenate([
        coco_image_id(np.asarray(det_image_index, dtype=np.float64)).reshape(-1, 1),
        np.asarray(det_boxes_xywh, dtype=np.float64).reshape(-1, 4),
        np.asarray(det_scores, dtype=np.float64).reshape(-1, 1),
        np.asarray(det_classes, dtype=np.float64).reshape(-1, 1)], axis=1)
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(rows)


def coco_metrics(coco_gt, det_image_index, det_classes, det_scores, det_boxes_xywh):
    """The 12 COCO box numbers for the detections against `coco_gt` (from `build_ground_truth`).

    Args:
      det_image_index [K] int (0-based image position), det_classes [K] int (1..C),
      det_scores [K] float, det_boxes_xywh [K, 4] COCO pixels.
    Returns:
      {name: float} for every name in COCO_METRIC_NAMES; NaN where pycocotools reports -1.
    """
    coco_dt = _load_detections(coco_gt, det_image_index, det_classes, det_scores, det_boxes_xywh)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (float("nan") if value == _COCO_UNDEFINED else float(value))
            for name, value in zip(COCO_METRIC_NAMES, evaluator.stats)}
