"""The model doctor's pictures (PNG, matplotlib's Agg backend) from metrics/analysis.analyze's output.

    summary.png        the four figures to look at first: the TIDE breakdown, precision-recall over all
                       classes at IoU 0.5 and 0.75, the confusion matrix, AP by object size
    tide.png           dAP of each error kind (fixing it alone) and of all false positives / negatives
    pr_curves.png      precision-recall per class at IoU 0.5 and 0.75, the best-F1 point of each marked
    confusion.png      the confusion matrix with its background row and column, counts in the cells
    ap_by_size.png     AP per class by object size and by aspect ratio (height / width)
    worst_images.png   contact sheet of the images with the most errors at the score threshold, each
                       error drawn in its kind's colour with engine/drawing, missed boxes included
"""

import math
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display (before pyplot is imported)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from engine.drawing import draw_boxes  # noqa: E402
from metrics import tide  # noqa: E402

# One colour per error kind (RGB 0-255), the same on every figure and on the sheet.
KIND_RGB = {tide.CLS: (230, 25, 75), tide.LOC: (245, 130, 48), tide.BOTH: (145, 30, 180),
            tide.DUPE: (255, 225, 25), tide.BKG: (0, 130, 200), tide.MISS: (240, 50, 230)}
TRUE_POSITIVE_RGB = (60, 180, 75)
KIND_WORDS = {tide.CLS: "classification", tide.LOC: "localization", tide.BOTH: "both cls+loc",
              tide.DUPE: "duplicate", tide.BKG: "background", tide.MISS: "missed"}
SHEET_COLUMNS = 4
SHEET_CELL_PX = 260


def _rgb(kind):
    return tuple(c / 255 for c in KIND_RGB[kind])


def _save(fig, path):
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _tide_axes(ax, numbers):
    t = numbers["tide"]
    kinds = list(tide.ERROR_KINDS)
    values = [t["dAP"][k] for k in kinds]
    ax.barh([KIND_WORDS[k] for k in kinds], values, color=[_rgb(k) for k in kinds])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(0.05, max(values) * 1.3))
    ax.set_xlabel("dAP50: AP gained by fixing this kind alone")
    ax.set_title(f"TIDE errors (AP50 {t['AP50']:.3f}; all false pos. "
                 f"{t['special_dAP']['FalsePos']:.3f}, all false neg. {t['special_dAP']['FalseNeg']:.3f})",
                 fontsize=9)


def _pr_axes(ax, curves, entries, names, title):
    for name in names:
        c, entry = curves[name], entries[name]
        if c["scores"].size == 0 or np.all(np.isnan(c["recall"])):
            continue
        line, = ax.plot(c["recall"], c["precision"], lw=2.5 if name == "all" else 1,
                        label=f"{name} (AP {entry['AP']:.2f}, F1 {entry['best_f1']:.2f} @ "
                              f"{entry['best_threshold']:.2f})" if entry["AP"] is not None else name)
        if entry["best_f1"] is not None:
            ax.plot([entry["recall_at_best"]], [entry["precision_at_best"]], "o", color=line.get_color())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
    ax.grid(True, alpha=0.2)


def _confusion_axes(ax, numbers):
    conf = numbers["confusion"]
    matrix = np.asarray(conf["matrix"])
    labels = conf["labels"]
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("detected class (background: missed)")
    ax.set_ylabel("true class (background: on nothing)")
    ax.set_title(f"confusion at score >= {conf['score_threshold']:g}, IoU >= {conf['iou_threshold']:g}",
                 fontsize=9)


def _bucket_axes(ax, buckets, title, per_class=True):
    names = list(buckets)
    if per_class:
        classes = list(next(iter(buckets.values()))["per_class"])
        width = 0.8 / len(names)
        for i, bucket in enumerate(names):
            values = [buckets[bucket]["per_class"][c] for c in classes]
            ax.bar(np.arange(len(classes)) + (i - len(names) / 2 + 0.5) * width,
                   [v if v is not None else 0 for v in values], width,
                   label=f"{bucket} ({buckets[bucket]['num_gt']} boxes)")
        ax.set_xticks(range(len(classes)))
        ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=7)
    else:
        values = [buckets[b]["AP"] for b in names]
        ax.bar(names, [v if v is not None else 0 for v in values], color="tab:blue")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([f"{b}\n({buckets[b]['num_gt']} boxes)" for b in names], fontsize=8)
        for x, v in enumerate(values):
            ax.text(x, v or 0, "n/a" if v is None else f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AP50")
    ax.set_title(title, fontsize=9)
    if per_class:
        ax.legend(fontsize=7)


def plot_summary(path, numbers, arrays):
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    _tide_axes(axes[0, 0], numbers)
    ax = axes[0, 1]
    for key, style in (("iou50", "-"), ("iou75", "--")):
        c, entry = arrays["pr_curves"][key]["all"], numbers["pr"][key]["overall"]
        if c["scores"].size:
            ax.plot(c["recall"], c["precision"], style, lw=2,
                    label=f"IoU {int(key[3:]) / 100:.2f}: best F1 {entry['best_f1'] or 0:.2f} "
                          f"@ score {entry['best_threshold'] or 0:.2f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall, all classes pooled", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.2)
    _confusion_axes(axes[1, 0], numbers)
    _bucket_axes(axes[1, 1], numbers["ap_by_size"], "AP50 by object size (COCO buckets, px area)",
                 per_class=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_tide(path, numbers):
    fig, ax = plt.subplots(figsize=(8, 4))
    _tide_axes(ax, numbers)
    fig.tight_layout()
    return _save(fig, path)


def plot_pr_curves(path, numbers, arrays):
    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    for ax, key in zip(axes, ("iou50", "iou75")):
        entries = {**numbers["pr"][key]["per_class"], "all": numbers["pr"][key]["overall"]}
        names = list(numbers["pr"][key]["per_class"]) + ["all"]
        _pr_axes(ax, arrays["pr_curves"][key], entries, names,
                 f"precision-recall at IoU {int(key[3:]) / 100:.2f} (dot: best F1)")
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(path, numbers):
    n = len(numbers["confusion"]["labels"])
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * n + 3), max(4.5, 0.5 * n + 2.5)))
    _confusion_axes(ax, numbers)
    fig.tight_layout()
    return _save(fig, path)


def plot_buckets(path, numbers):
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    _bucket_axes(axes[0], numbers["ap_by_size"], "AP50 by object size (small <= 32^2 < medium <= 96^2 px)")
    _bucket_axes(axes[1], numbers["ap_by_aspect"], "AP50 by aspect (h/w: wide < 2/3 <= square <= 3/2 < tall)")
    fig.tight_layout()
    return _save(fig, path)


def draw_errors(image, data, arrays, index, class_names, score_threshold):
    """Image `index` with its confident detections (score >= threshold) in their kind's colour (true
    positives green) and its missed boxes (magenta), captioned with the kind, class and score."""
    dets = np.flatnonzero((data.det_image_index == index) & (data.det_scores >= score_threshold))
    for kind_index, kind in enumerate(tide.ERROR_KINDS[:-1]):
        rows = dets[arrays["det_error"][dets] == kind_index]
        image = draw_boxes(image, data.det_boxes[rows], data.det_classes[rows],
                           [f"{kind} {n}" for n in class_names], data.det_scores[rows], KIND_RGB[kind])
    rows = dets[arrays["outcome"][dets] == tide.TRUE_POSITIVE]
    image = draw_boxes(image, data.det_boxes[rows], data.det_classes[rows], class_names,
                       data.det_scores[rows], TRUE_POSITIVE_RGB)
    missed = np.flatnonzero((data.gt_image_index == index) & arrays["gt_missed_at_threshold"])
    return draw_boxes(image, data.gt_boxes[missed], data.gt_labels[missed],
                      [f"{tide.MISS} {n}" for n in class_names], None, KIND_RGB[tide.MISS])


def worst_images_sheet(path, data, numbers, arrays, images, class_names, score_threshold):
    """Contact sheet of the worst images (`images` {index: uint8 [H, W, 3]}); None when none."""
    cells = [(i, w) for i, w in zip(arrays["worst"], numbers["worst_images"]) if i in images]
    if not cells:
        return None
    rows = math.ceil(len(cells) / SHEET_COLUMNS)
    fig, axes = plt.subplots(rows, SHEET_COLUMNS, figsize=(SHEET_COLUMNS * SHEET_CELL_PX / 100,
                                                           rows * (SHEET_CELL_PX + 30) / 100), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (index, worst) in zip(axes.ravel(), cells):
        ax.imshow(draw_errors(images[index], data, arrays, index, class_names, score_threshold))
        ax.set_title(f"{worst['image_id']}: {worst['false_positives']} false pos., {worst['missed']} missed",
                     fontsize=8)
    handles = [matplotlib.patches.Patch(color=_rgb(k), label=KIND_WORDS[k]) for k in tide.ERROR_KINDS]
    handles.append(matplotlib.patches.Patch(color=tuple(c / 255 for c in TRUE_POSITIVE_RGB), label="correct"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path)


def write_all(output_dir, data, numbers, arrays, class_names, images, score_threshold):
    """Every PNG into `output_dir`; returns {name: path}, summary first."""
    paths = {"summary": plot_summary(os.path.join(output_dir, "summary.png"), numbers, arrays),
             "tide": plot_tide(os.path.join(output_dir, "tide.png"), numbers),
             "pr_curves": plot_pr_curves(os.path.join(output_dir, "pr_curves.png"), numbers, arrays),
             "confusion": plot_confusion(os.path.join(output_dir, "confusion.png"), numbers),
             "ap_by_size": plot_buckets(os.path.join(output_dir, "ap_by_size.png"), numbers)}
    sheet = worst_images_sheet(os.path.join(output_dir, "worst_images.png"), data, numbers, arrays, images,
                               class_names, score_threshold)
    if sheet:
        paths["worst_images"] = sheet
    return paths
