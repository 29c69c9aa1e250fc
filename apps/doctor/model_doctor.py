"""The model doctor behind eval_ssd.py --analysis_dir: detections from any source into one evaluator,
then the numbers (metrics/analysis.py), the PNGs (model_plots.py), the text report (model_report.py) and
TensorBoard, written as one folder.

Detections come from:
  a checkpoint           eval_ssd.py's own evaluation (engine/evaluation.evaluate hands its evaluator)
  an export              `evaluator_from_detector`: any kind the one detector door opens
                         (engine.serving.load_detector: SavedModel, .tflite, model_dir, checkpoint), run
                         on the original images of the records
  a COCO results JSON    `evaluator_from_results`: against the records (their image ids: COCO records'
                         own, else image_id_map.json beside the results file, as eval_ssd.py writes
                         them) or against an instances JSON alone (every image of the file)

The folder (written whole, dataset/atomic.staged_folder): report.txt, analysis.json (every number),
summary.png and the other PNGs (model_plots.py), and for an export or a results file tensorboard/
(for a checkpoint the TensorBoard data goes to <model_dir>/eval beside the eval scalars): the PNGs as
images, the TIDE dAPs as scalars and the precision-recall curves as pr_curves data.
"""

import json
import os
import time

import numpy as np
from absl import logging

from apps.doctor import model_plots, model_report
from dataset import coco, fields, label_map, reader
from dataset.atomic import staged_folder, write_atomically
from engine import evaluation, summaries
from metrics import analysis, result_files
from metrics import coco as coco_metrics
from metrics.evaluator import DetectionEvaluator

REPORT_FILENAME = "report.txt"
NUMBERS_FILENAME = "analysis.json"
TENSORBOARD_SUBDIR = "tensorboard"
TENSORBOARD_PREFIX = "model_doctor/"


def _replaceable(folder):
    """staged_folder's check: an earlier doctor folder or an empty one may be replaced."""
    if not os.listdir(folder) or os.path.exists(os.path.join(folder, REPORT_FILENAME)):
        return None
    return f"is not a model doctor folder (no {REPORT_FILENAME}) and not empty"


def _record_examples(data_dir, split):
    """numpy example dicts of every record of `split`, in file order."""
    for example in reader.read_split(data_dir, split):
        yield {k: v.numpy() for k, v in example.items()}


def _add_example(evaluator, example, boxes, scores, classes):
    evaluator.add(example[fields.IMAGE_ID].decode(), int(example[fields.HEIGHT]), int(example[fields.WIDTH]),
                  example[fields.BOXES], example[fields.LABELS], example[fields.DIFFICULT], boxes, scores,
                  classes, gt_is_crowd=example[fields.IS_CROWD], gt_area=example[fields.AREA])


def evaluator_from_detector(detector, data_dir, split):
    """A filled DetectionEvaluator: `detector` (engine.serving.Detector) on every original image of
    `split`, one image per call (the records' images differ in size)."""
    names = label_map.read_label_map(os.path.join(data_dir, label_map.LABEL_MAP_FILENAME))
    if tuple(names) != tuple(detector.class_names):
        raise ValueError(f"label map mismatch: {detector.path} detects {list(detector.class_names)}, "
                         f"{data_dir} labels {list(names)}")
    evaluator = DetectionEvaluator(names, coco.find_category_map(data_dir))
    total = sum(reader.count_records(f) for f in reader.shard_files(data_dir, split))
    start = time.time()
    for count, example in enumerate(_record_examples(data_dir, split), start=1):
        found = detector(example[fields.IMAGE])
        _add_example(evaluator, example, found.boxes, found.scores, found.classes)
        logging.log_every_n_seconds(logging.INFO, "%s", 10,
                                    evaluation.progress_line(count, total, time.time() - start))
    return evaluator


def _read_results(results_file):
    try:
        with open(results_file) as f:
            results = json.load(f)
        rows = [(int(r["image_id"]), int(r["category_id"]), float(r["score"]), [float(v) for v in r["bbox"]])
                for r in results]
    except (OSError, ValueError) as e:
        raise ValueError(f"--results_file {results_file}: not a COCO results JSON ({e})") from None
    except (KeyError, TypeError) as e:
        raise ValueError(f"--results_file {results_file}: not a COCO results JSON (an entry lacks "
                         f"image_id, category_id, score or a 4-number bbox: {e})") from None
    if any(len(r[3]) != 4 for r in rows):
        raise ValueError(f"--results_file {results_file}: a bbox has not 4 numbers")
    return rows


def _group(rows, results_file, image_key, class_of):
    """{record image key: (xywh [K, 4], scores [K], classes [K])} of the results rows."""
    grouped = {}
    for image_id, category_id, score, box in rows:
        if category_id not in class_of:
            raise ValueError(f"--results_file {results_file}: category_id {category_id} is not a class")
        grouped.setdefault(image_key(image_id), []).append((box, score, class_of[category_id]))
    return {k: (np.array([r[0] for r in v], np.float64).reshape(-1, 4), np.array([r[1] for r in v]),
                np.array([r[2] for r in v], np.int64)) for k, v in grouped.items()}


def evaluator_from_results(results_file, data_dir=None, split="val", annotations_file=None):
    """A filled DetectionEvaluator from a COCO results JSON, against the records of `split` in
    `data_dir` or, without data_dir, against `annotations_file` (an instances JSON)."""
    rows = _read_results(results_file)
    if data_dir is None:
        return _evaluator_from_instances(rows, results_file, annotations_file)
    names = label_map.read_label_map(os.path.join(data_dir, label_map.LABEL_MAP_FILENAME))
    category_map = coco.find_category_map(data_dir)
    if category_map is not None:
        class_of = {c: k for k, c in enumerate(category_map.coco_ids, start=1)}
        image_key = str
    else:
        map_path = os.path.join(os.path.dirname(os.path.abspath(results_file)),
                                result_files.IMAGE_ID_MAP_FILENAME)
        if not os.path.isfile(map_path):
            raise ValueError(f"--results_file {results_file}: VOC records need {map_path} (written beside "
                             "the results by eval_ssd.py) to map COCO image ids to the records' ids")
        with open(map_path) as f:
            by_coco_id = {int(v): k for k, v in json.load(f).items()}
        class_of = {k: k for k in range(1, len(names) + 1)}

        def image_key(image_id):
            if image_id not in by_coco_id:
                raise ValueError(f"--results_file {results_file}: image_id {image_id} is not in {map_path}")
            return by_coco_id[image_id]
    grouped = _group(rows, results_file, image_key, class_of)
    evaluator = DetectionEvaluator(names, category_map)
    for example in _record_examples(data_dir, split):
        image_id = example[fields.IMAGE_ID].decode()
        xywh, scores, classes = grouped.pop(image_id, (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)))
        boxes = coco.coco_xywh_to_normalized(xywh, int(example[fields.WIDTH]), int(example[fields.HEIGHT]))
        _add_example(evaluator, example, boxes, scores, classes)
    if grouped:
        raise ValueError(f"--results_file {results_file}: {len(grouped)} images are not in the {split} "
                         f"records of {data_dir}, e.g. {sorted(grouped)[:3]}")
    return evaluator


def _evaluator_from_instances(rows, results_file, annotations_file):
    instances = coco_metrics.load_ground_truth(annotations_file).dataset   # checked: one-line errors
    categories = sorted(instances["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in categories]
    class_of = {c["id"]: k for k, c in enumerate(categories, start=1)}
    grouped = _group(rows, results_file, int, class_of)
    evaluator = DetectionEvaluator(names)
    annotations = {}
    for a in instances["annotations"]:
        annotations.setdefault(a["image_id"], []).append(a)
    for image in instances["images"]:
        h, w = int(image["height"]), int(image["width"])
        anns = annotations.get(image["id"], [])
        gt_xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        xywh, scores, classes = grouped.pop(image["id"], (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)))
        evaluator.add(str(image["id"]), h, w, coco.coco_xywh_to_normalized(gt_xywh, w, h),
                      [class_of[a["category_id"]] for a in anns], np.zeros(len(anns), bool),
                      coco.coco_xywh_to_normalized(xywh, w, h), scores, classes,
                      gt_is_crowd=[bool(a.get("iscrowd", 0)) for a in anns],
                      gt_area=[float(a.get("area", b[2] * b[3])) for a, b in zip(anns, gt_xywh)])
    if grouped:
        raise ValueError(f"--results_file {results_file}: {len(grouped)} image ids are not in "
                         f"{annotations_file}, e.g. {sorted(grouped)[:3]}")
    return evaluator


def record_images(data_dir, split, image_ids):
    """{image id: uint8 [H, W, 3]} of the records of `split` whose id is in `image_ids`."""
    wanted, found = set(image_ids), {}
    for example in reader.read_split(data_dir, split):
        image_id = example[fields.IMAGE_ID].numpy().decode()
        if image_id in wanted:
            found[image_id] = example[fields.IMAGE].numpy()
            if len(found) == len(wanted):
                break
    return found


def write_tensorboard(writer, step, numbers, arrays, class_names, paths):
    """TIDE dAPs as scalars, the PNGs as images and every precision-recall curve as pr_curves data."""
    scalars = {f"tide/dAP_{k}": v for k, v in numbers["tide"]["dAP"].items()}
    scalars.update({f"tide/dAP_{k}": v for k, v in numbers["tide"]["special_dAP"].items()})
    scalars["tide/AP50"] = numbers["tide"]["AP50"]
    writer.scalars(step, scalars, prefix=TENSORBOARD_PREFIX)
    for key, curves in arrays["pr_curves"].items():
        for name in (*class_names, "all"):
            writer.pr_curve(step, f"{TENSORBOARD_PREFIX}pr_{key}/{name}", curves[name]["counts"],
                            description=f"precision-recall of {name} at IoU 0.{key[3:]}, by score threshold")
    from PIL import Image
    writer.images(step, TENSORBOARD_PREFIX + "summary", [np.asarray(Image.open(paths["summary"]).convert("RGB"))])
    for name, path in paths.items():
        if name != "summary":
            writer.images(step, TENSORBOARD_PREFIX + name, [np.asarray(Image.open(path).convert("RGB"))])


def run(analysis_dir, evaluator, source, score_threshold=0.3, confusion_iou=0.5, num_worst=16,
        images_fn=None, summary_dir=None, step=0):
    """The whole doctor for a filled `evaluator`. `images_fn(image ids) -> {id: uint8 image}` gives the
    worst images for the sheet (None: no sheet); TensorBoard goes to `summary_dir`, or to
    <analysis_dir>/tensorboard when None. Returns (numbers with "analysis_seconds", report lines)."""
    data = evaluator.evaluation_set()
    class_names = evaluator.class_names
    start = time.perf_counter()
    numbers, arrays = analysis.analyze(data, class_names, score_threshold, confusion_iou, num_worst)
    numbers["analysis_seconds"] = round(time.perf_counter() - start, 4)   # the numbers, PNGs aside
    lines = model_report.report_lines(numbers, class_names, source)
    with staged_folder(analysis_dir, _replaceable) as stage:
        images = {}
        if images_fn is not None and len(arrays["worst"]):
            by_id = images_fn([data.image_ids[i] for i in arrays["worst"]])
            images = {i: by_id[data.image_ids[i]] for i in arrays["worst"] if data.image_ids[i] in by_id}
        paths = model_plots.write_all(stage, data, numbers, arrays, class_names, images, score_threshold)
        write_atomically(os.path.join(stage, REPORT_FILENAME), "\n".join(lines) + "\n")
        write_atomically(os.path.join(stage, NUMBERS_FILENAME), json.dumps(numbers, indent=1, allow_nan=False))
        writer = summaries.Writer(summary_dir or os.path.join(stage, TENSORBOARD_SUBDIR))
        write_tensorboard(writer, step, numbers, arrays, class_names, paths)
        writer.close()
    numbers["files"] = {name: os.path.join(analysis_dir, os.path.basename(p)) for name, p in paths.items()}
    numbers["files"]["report"] = os.path.join(analysis_dir, REPORT_FILENAME)
    return numbers, lines
