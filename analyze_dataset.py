"""Dataset doctor: lint a dataset, show its boxes against a preset's anchors, fit anchors to it.

    python3 analyze_dataset.py --data_dir dataset/tfrecords --split train      # converted records
    python3 analyze_dataset.py --data_dir dataset/sample --split train         # a VOC source folder
    python3 analyze_dataset.py --data_dir dataset/tfrecords --fit_anchors anchors.json
    python3 train_ssd.py --anchor_config anchors.json ...                      # train with them

Reports per-class counts, box distributions, suspicious annotations (each with its image id), and
the anchor coverage: the share of boxes whose best anchor has IoU >= the match threshold, by size
and class, and the boxes only a forced match trains. Writes PNG plots to --output_dir (and to
TensorBoard with --tensorboard_dir). The text summary goes to stdout, then one JSON object with
every number as the last line. COCO source folders: convert them to records first (dataset/coco.py).
"""

import json
import time

from absl import flags, logging

from engine import cli
from model import presets

flags.DEFINE_string("data_dir", cli.DEFAULT_DATA_DIR, "Converted records (shards + label_map.pbtxt) or a "
                    "VOC-layout folder (Annotations/, JPEGImages/, ImageSets/Main/).")
flags.DEFINE_string("split", None, "Records: the shard prefix (default train). VOC: the image set "
                    "(ImageSets/Main/<split>.txt; default trainval.txt, else every annotation).")
flags.DEFINE_string("label_map", None, "VOC sources: label_map.pbtxt fixing classes and ids "
                    "(default: the sorted class names found, as the converter).")
flags.DEFINE_enum("model", "ssd300_vgg16", presets.NAMES, "Model preset whose anchors are measured.")
flags.DEFINE_string("anchor_config", None, "Measure these anchors (an --fit_anchors file) instead of "
                    "the preset's.")
flags.DEFINE_float("match_threshold", None, "Best-anchor IoU that counts as covered (default: the "
                   "preset's, 0.5 as the paper's matching).")
flags.DEFINE_string("fit_anchors", None, "Fit min/max sizes and aspect ratios to the boxes and write "
                    "the anchor file here (for train_ssd.py --anchor_config).")
flags.DEFINE_integer("fit_max_boxes", 50000, "Boxes the fit searches on (a seeded sample when more).")
flags.DEFINE_integer("seed", 0, "Seed of the fit's sample and moves, and of the plots' subsample.")
flags.DEFINE_string("output_dir", "/tmp/dataset_doctor", "PNG plots here; empty: no plots.")
flags.DEFINE_string("tensorboard_dir", None, "Also write the plots as TensorBoard images here.")
flags.DEFINE_integer("max_listed", 50, "Suspicious boxes and forced-only boxes listed per kind.")
flags.DEFINE_integer("contact_sheet_cells", 24, "Suspicious boxes drawn on the contact sheet.")
FLAGS = flags.FLAGS

# Boxes checked against model.anchors.generate by brute force before the fast grid form is trusted.
GRID_CHECK_BOXES = 256
GRID_CHECK_TOLERANCE = 1e-5


def _best_ious(boxes, config):
    """Best IoU per box: the exact grid form, checked against the generated anchors on a sample."""
    import numpy as np

    from model import anchor_stats, anchors as anchors_lib
    fast = anchor_stats.grid_best_iou(boxes, config)
    anchors = anchors_lib.generate(config)
    sample = np.linspace(0, len(boxes) - 1, min(len(boxes), GRID_CHECK_BOXES)).astype(int)
    if len(sample):
        brute, _ = anchor_stats.best_anchor_iou(boxes[sample], anchors)
        if np.max(np.abs(brute - fast[sample])) > GRID_CHECK_TOLERANCE:
            # Anchors that are not the plain grid (e.g. clipped): measure against every anchor.
            logging.info("anchors of %s are not the unclipped grid; brute force over %d anchors",
                         config.name, len(anchors))
            fast, _ = anchor_stats.best_anchor_iou(boxes, anchors)
    return fast


def _load(path, split):
    from dataset import annotations, label_map
    kind = annotations.detect_source(path)
    if kind == annotations.RECORDS:
        return annotations.from_records(path, split or "train")
    if kind == annotations.VOC:
        names = label_map.read_label_map(FLAGS.label_map) if FLAGS.label_map else None
        return annotations.from_voc(path, split, names)
    if kind == annotations.COCO:
        raise ValueError(f"{path} is a COCO source: convert it to records first (convert_coco_tfrecords.py, "
                         f"dataset/coco.py) and pass the records folder as --data_dir")
    raise ValueError(f"{path}: neither records (label_map.pbtxt + <split>-?????-of-????? shards) nor a "
                     f"VOC layout (Annotations/)")


def run():
    import numpy as np

    from apps.doctor import report as report_lines
    from dataset import lint
    from engine import anchor_file
    from model import anchor_stats

    table = _load(FLAGS.data_dir, FLAGS.split)
    config = presets.get(FLAGS.model, max(1, len(table.class_names)))
    if FLAGS.anchor_config:
        config = anchor_file.apply(config, FLAGS.anchor_config)
    threshold = config.match_threshold if FLAGS.match_threshold is None else FLAGS.match_threshold

    stats = lint.statistics(table)
    tiny_side = anchor_stats.uncoverable_side(config, threshold)
    findings = lint.find_suspicious(table, tiny_side)
    counts = lint.count_by_kind(findings)

    trained = np.flatnonzero(~table.crowd)                     # crowd boxes are never matched
    boxes, labels = table.boxes[trained], table.labels[trained]
    best = _best_ious(boxes, config)
    report = anchor_stats.coverage_report(best, boxes, labels, table.class_names, config.image_size,
                                          threshold)

    def forced_list(best_iou):
        order = [i for i in np.argsort(best_iou, kind="stable") if best_iou[i] < threshold]
        return [{"image_id": table.image_ids[table.box_image[trained[i]]], "box": int(trained[i]),
                 "class": table.class_names[labels[i] - 1] if 1 <= labels[i] <= len(table.class_names)
                 else str(labels[i]), "best_iou": float(best_iou[i])} for i in order[:FLAGS.max_listed]]

    result = {"source": table.source, "preset": config.name, "anchor_config": FLAGS.anchor_config,
              "statistics": stats, "suspicious": {"counts": counts, "tiny_side": tiny_side,
                                                  "listed": [f.as_dict() for f in findings]},
              "coverage": report, "forced_only": forced_list(best),
              "repairs": [list(n) for n in table.notes], "skipped": [list(s) for s in table.skipped]}

    fitted = fitted_best = fitted_report = fit = None
    if FLAGS.fit_anchors:
        if not len(boxes):
            raise ValueError(f"{table.source}: no boxes to fit anchors to")
        start = time.monotonic()

        def progress(i, n, searched_coverage):
            elapsed = time.monotonic() - start
            logging.info("fitting anchors: step %d/%d, coverage %.3f, %.1f s, ETA %.0f s", i, n,
                         searched_coverage, elapsed, elapsed / i * (n - i))
        fitted, info = anchor_stats.fit_anchors(boxes, config, threshold, FLAGS.seed, FLAGS.fit_max_boxes,
                                                progress)
        fitted_best = _best_ious(boxes, fitted)
        fitted_report = anchor_stats.coverage_report(fitted_best, boxes, labels, table.class_names,
                                                     config.image_size, threshold)
        fit = {"file": FLAGS.fit_anchors, **info,
               "coverage_before": report["coverage"], "coverage_after": fitted_report["coverage"],
               "mean_best_iou_before": report["mean_best_iou"],
               "mean_best_iou_after": fitted_report["mean_best_iou"],
               "coverage_searched_before": info["coverage_before"],
               "coverage_searched_after": info["coverage_after"],
               "feature_maps": anchor_stats.anchor_config_dict(fitted)["feature_maps"]}
        anchor_file.write(FLAGS.fit_anchors, fitted, {k: v for k, v in fit.items()
                                                      if k not in ("file", "feature_maps")})
        result["fit"] = {**fit, "coverage_report": fitted_report, "forced_only": forced_list(fitted_best)}

    if FLAGS.output_dir:
        from apps.doctor import plots
        from dataset import annotations
        shown = lint.for_review(findings, FLAGS.contact_sheet_cells)
        images = annotations.load_images(table, [f.image_index for f in shown])
        result["plots"] = plots.write_all(FLAGS.output_dir, table, best, report, config, shown,
                                          images, fitted, fitted_best, fitted_report, FLAGS.seed,
                                          f"{FLAGS.anchor_config} anchors" if FLAGS.anchor_config else None)
        if FLAGS.tensorboard_dir:
            plots.write_tensorboard(FLAGS.tensorboard_dir, result["plots"])
    elif FLAGS.tensorboard_dir:
        raise ValueError("--tensorboard_dir needs --output_dir (the plots are written there first)")

    lines = report_lines.summary_lines(table, stats, findings, counts, report, config, result["forced_only"], fit,
                                       FLAGS.max_listed)
    if "plots" in result:
        lines.append("Plots: " + ", ".join(result["plots"].values()))
    print("\n".join(lines))
    print(json.dumps(result), flush=True)   # the last line: every number, for scripts and tests


def main(argv):
    del argv
    run()   # a mistake in the data raises ValueError / FileNotFoundError: one line (engine/cli.py)


if __name__ == "__main__":
    cli.run(main)
