"""Detection result files: the VOC devkit's per-class text files and a COCO results JSON.

VOC devkit (VOCevaldet.m reads `%s %f %f %f %f %f`): one file per class named
`<competition>_det_<image_set>_<class>.txt` (comp4: trained on any data), one line per detection
"image_id score xmin ymin xmax ymax" with 1-based inclusive pixel boxes (dataset/voc_boxes.py).
A class without detections still gets an (empty) file, which the devkit expects to exist.

COCO results: a JSON list of {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score"}.
COCO records give their original image ids and COCO category ids, so the JSON alone is what the COCO
evaluation server takes. For other records (VOC ids are strings) image k (0-based, in evaluation
order) is id k + 1 (metrics/coco.py), and `image_id_map.json` records {voc_image_id: coco_image_id}
beside it.

Boxes are written to 0.1 px (VOC, as the devkit's own examples) or 0.01 px (COCO) and scores to
1e-6; results read back from these files can therefore differ from the in-memory evaluation in the
last digits. Every file is written to a temporary name in its folder and moved into place with
os.replace, so a reader never sees a half-written file.
"""

import json
import os

import numpy as np

from dataset.atomic import write_atomically
from metrics.coco import coco_image_id

VOC_COMPETITION = "comp4"  # devkit: comp3 = trained on VOC data only, comp4 = on any data
VOC_IMAGE_SET = "test"
VOC_LINE_FORMAT = "%s %.6f %.1f %.1f %.1f %.1f\n"
COCO_RESULTS_FILENAME = "coco_detections.json"
IMAGE_ID_MAP_FILENAME = "image_id_map.json"
COCO_BOX_DECIMALS = 2
SCORE_DECIMALS = 6


def voc_result_filename(class_name, competition=VOC_COMPETITION, image_set=VOC_IMAGE_SET):
    """The devkit's result file name for one class, e.g. comp4_det_test_aeroplane.txt."""
    return "%s_det_%s_%s.txt" % (competition, image_set, class_name)


def write_voc_result_files(output_dir, class_names, image_ids, det_image_index, det_classes,
                           det_scores, det_pixel_boxes, competition=VOC_COMPETITION,
                           image_set=VOC_IMAGE_SET):
    """One devkit result file per class; returns their paths in class order.

    Args:
      class_names: C names; name i is class id i + 1.
      image_ids: [N] VOC image id strings (e.g. "000001").
      det_image_index [K] int, det_classes [K] int (1..C), det_scores [K] float,
      det_pixel_boxes [K, 4] VOC (xmin, ymin, xmax, ymax) 1-based pixels.
    """
    os.makedirs(output_dir, exist_ok=True)
    det_image_index = np.asarray(det_image_index).reshape(-1)
    det_classes = np.asarray(det_classes).reshape(-1)
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    det_pixel_boxes = np.asarray(det_pixel_boxes, dtype=np.float64).reshape(-1, 4)
    paths = []
    for class_id, class_name in enumerate(class_names, start=1):
        rows = np.flatnonzero(det_classes == class_id)
        text = "".join(VOC_LINE_FORMAT % (image_ids[det_image_index[i]], det_scores[i],
                                          *det_pixel_boxes[i]) for i in rows)
        path = os.path.join(output_dir, voc_result_filename(class_name, competition, image_set))
        write_atomically(path, text)
        paths.append(path)
    return paths


def write_coco_results(output_dir, image_ids, det_image_index, det_classes, det_scores,
                       det_boxes_xywh, coco_image_ids=None, category_ids=None):
    """COCO results JSON, and the image id map unless `coco_image_ids` are given; returns their paths.

    Args:
      image_ids: [N] image id strings; without coco_image_ids image k becomes COCO id k + 1.
      det_image_index [K] int, det_classes [K] int (1..C), det_scores [K] float,
      det_boxes_xywh [K, 4] COCO [x, y, w, h] pixels.
      coco_image_ids: [N] original COCO image ids (COCO records); then no map file is written.
      category_ids: [C] COCO category id of each class; default 1..C.
    """
    os.makedirs(output_dir, exist_ok=True)
    det_image_index = np.asarray(det_image_index, dtype=np.int64).reshape(-1)
    if coco_image_ids is None:
        coco_ids = coco_image_id(det_image_index).tolist()
    else:
        coco_ids = np.asarray(coco_image_ids, dtype=np.int64)[det_image_index].tolist()
    classes = np.asarray(det_classes, dtype=np.int64).reshape(-1)
    if category_ids is not None:
        classes = np.asarray(category_ids, dtype=np.int64)[classes - 1]
    classes = classes.tolist()
    scores = np.round(np.asarray(det_scores, dtype=np.float64).reshape(-1), SCORE_DECIMALS).tolist()
    boxes = np.round(np.asarray(det_boxes_xywh, dtype=np.float64).reshape(-1, 4),
                     COCO_BOX_DECIMALS).tolist()
    results = [{"image_id": i, "category_id": c, "bbox": b, "score": s}
               for i, c, b, s in zip(coco_ids, classes, boxes, scores)]
    results_path = os.path.join(output_dir, COCO_RESULTS_FILENAME)
    write_atomically(results_path, json.dumps(results))
    if coco_image_ids is not None:
        return (results_path,)
    id_map = {image_id: int(coco_image_id(k)) for k, image_id in enumerate(image_ids)}
    map_path = os.path.join(output_dir, IMAGE_ID_MAP_FILENAME)
    write_atomically(map_path, json.dumps(id_map, indent=0))
    return results_path, map_path
