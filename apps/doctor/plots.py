"""The dataset doctor's pictures (PNG, matplotlib's Agg backend) and the same to TensorBoard.

    box_shapes.png     every box's width x height in the S x S net input (log-log), green when its
                       best anchor reaches the match threshold, red when only a forced match trains
                       it; each anchor shape of the preset (and of the fit) drawn over them
    distributions.png  sqrt(area), aspect (h/w), width and height histograms with the anchor
                       scales and aspect ratios as vertical lines
    coverage.png       coverage by size bucket and by class (preset, and fitted when given), and
                       the histogram of best-anchor IoUs
    suspicious.png     contact sheet of the suspicious boxes drawn on their images (red), captioned
                       with the kind and the image id

Sizes are net-input pixels (normalized box x S): the net sees each image resized to S x S, so that
is the frame where anchors and boxes meet.
"""

import io
import math
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display (before pyplot is imported)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from engine.drawing import draw_boxes  # noqa: E402
from model import anchor_stats  # noqa: E402

MAX_SCATTER_POINTS = 20000
SHEET_COLUMNS = 4
SHEET_CELL_PX = 240
TENSORBOARD_PREFIX = "dataset_doctor/"


def _anchor_shapes(config):
    """[(map index, height px, width px)] of every box spec of every feature map."""
    shapes = []
    for k, fm in enumerate(config.feature_maps):
        heights, widths = anchor_stats._box_specs(fm.min_size, fm.max_size, fm.aspect_ratios)
        shapes.extend((k, h, w) for h, w in zip(heights, widths))
    return shapes


def _save(fig, path):
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _net_sizes(boxes, image_size):
    h = (boxes[:, 2] - boxes[:, 0]) * image_size
    w = (boxes[:, 3] - boxes[:, 1]) * image_size
    return h, w


def plot_box_shapes(path, boxes, best_iou, config, threshold, fitted=None, seed=0, anchors_name=None):
    """`fitted` anchors, when given, are drawn as black + over `config`'s (named `anchors_name`)."""
    anchors_name = anchors_name or f"{config.name} anchors"
    h, w = _net_sizes(boxes, config.image_size)
    keep = (h > 0) & (w > 0)
    index = np.flatnonzero(keep)
    if len(index) > MAX_SCATTER_POINTS:
        index = np.sort(np.random.default_rng(seed).choice(index, MAX_SCATTER_POINTS, replace=False))
    covered = best_iou[index] >= threshold
    fig, ax = plt.subplots(figsize=(11, 7))
    ax.scatter(w[index][covered], h[index][covered], s=4, c="tab:green", alpha=0.4,
               label=f"box, best IoU >= {threshold:g} ({int(np.sum(best_iou >= threshold))})")
    ax.scatter(w[index][~covered], h[index][~covered], s=4, c="tab:red", alpha=0.5,
               label=f"box, forced match only ({int(np.sum(best_iou < threshold))})")
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(config.feature_maps)))
    for k, ah, aw in _anchor_shapes(config):
        ax.scatter([aw], [ah], marker="x", s=60, color=colors[k], linewidths=2)
    for k, fm in enumerate(config.feature_maps):
        ax.scatter([], [], marker="x", color=colors[k],
                   label=f"{anchors_name} {fm.source} ({fm.size}x{fm.size})")
    if fitted is not None:
        for k, ah, aw in _anchor_shapes(fitted):
            ax.scatter([aw], [ah], marker="+", s=90, color="black", linewidths=1.5)
        ax.scatter([], [], marker="+", color="black", label="fitted anchors")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"box width (px of the {config.image_size}x{config.image_size} net input)")
    ax.set_ylabel("box height (px of the net input)")
    ax.set_title(f"Box shapes against the {anchors_name}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # outside: never over boxes
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    return _save(fig, path)


def plot_distributions(path, boxes, config):
    h, w = _net_sizes(boxes, config.image_size)
    keep = (h > 0) & (w > 0)
    h, w = h[keep], w[keep]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    side_bins = np.geomspace(max(1.0, float(np.min(np.sqrt(h * w)))) if len(h) else 1.0,
                             max(2.0, 1.5 * config.image_size), 40)
    ax = axes[0, 0]
    ax.hist(np.sqrt(h * w), bins=side_bins, color="tab:blue")
    for fm in config.feature_maps:
        ax.axvline(fm.min_size, color="tab:orange", lw=1.5)
        ax.axvline(math.sqrt(fm.min_size * fm.max_size), color="tab:orange", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_title("sqrt(area), net px; orange: anchor min sizes (solid), sqrt(min*max) (dashed)", fontsize=9)
    ax = axes[0, 1]
    ax.hist(np.log2(h / w), bins=40, color="tab:blue")
    ratios = sorted({r for fm in config.feature_maps for r in fm.aspect_ratios})
    ax.axvline(0.0, color="tab:orange", lw=1.5)
    for r in ratios:
        for value in (math.log2(r), -math.log2(r)):
            ax.axvline(value, color="tab:orange", lw=1.5)
    ax.set_title("log2(height / width) in the net; orange: anchor aspects 1, r, 1/r", fontsize=9)
    for ax, values, name in ((axes[1, 0], w, "width"), (axes[1, 1], h, "height")):
        ax.hist(values, bins=side_bins, color="tab:blue")
        ax.set_xscale("log")
        ax.set_title(f"box {name}, net px", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _bars(ax, names, series, title):
    x = np.arange(len(names))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series):
        heights = [v if v is not None else 0.0 for v in values]
        ax.bar(x + i * width - 0.4 + width / 2, heights, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def _share(report):
    return "no boxes" if report["coverage"] is None else f"{report['coverage']:.3f}"


def plot_coverage(path, report, fitted_report=None):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key, title in ((axes[0], "by_size", "coverage by sqrt(area), net px"),
                           (axes[1], "by_class", "coverage by class")):
        names = list(report[key])
        series = [(f"preset ({_share(report)})", [report[key][n]["coverage"] for n in names])]
        if fitted_report is not None:
            series.append((f"fitted ({_share(fitted_report)})",
                           [fitted_report[key][n]["coverage"] for n in names]))
        labels = [f"{n}\n({report[key][n]['boxes']})" for n in names]
        _bars(ax, labels, series, title)
    ax = axes[2]
    edges = np.linspace(0, 1, anchor_stats.IOU_HISTOGRAM_BINS + 1)
    ax.stairs(report["best_iou_histogram"], edges, label="preset", fill=True, alpha=0.5)
    if fitted_report is not None:
        ax.stairs(fitted_report["best_iou_histogram"], edges, label="fitted", lw=2)
    ax.axvline(report["threshold"], color="black", ls="--", lw=1)
    ax.set_title("best-anchor IoU per box (dashed: match threshold)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _crop_around(image, boxes, context=3.0, min_fraction=0.3):
    """The part of `image` around `boxes` [K, 4]: their union grown `context` times, at least
    `min_fraction` of each image side, so a tiny box is visible on the sheet. No boxes: the image."""
    if not len(boxes):
        return image
    height, width = image.shape[:2]
    lo, hi = np.min(boxes[:, :2], axis=0), np.max(boxes[:, 2:], axis=0)
    centre, half = (lo + hi) / 2, np.maximum((hi - lo) * context, min_fraction) / 2
    y0, x0 = np.clip(centre - half, 0, 1)
    y1, x1 = np.clip(centre + half, 0, 1)
    return image[int(y0 * height):max(int(y0 * height) + 1, int(math.ceil(y1 * height))),
                 int(x0 * width):max(int(x0 * width) + 1, int(math.ceil(x1 * width)))]


def contact_sheet(path, table, findings, images, class_names, max_cells=24):
    """The first `max_cells` findings that have boxes or are empty images, drawn on their images."""
    cells = [f for f in findings if f.image_index in images][:max_cells]
    if not cells:
        return None
    rows = math.ceil(len(cells) / SHEET_COLUMNS)
    fig, axes = plt.subplots(rows, SHEET_COLUMNS, figsize=(SHEET_COLUMNS * SHEET_CELL_PX / 100,
                                                           rows * (SHEET_CELL_PX + 30) / 100), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, finding in zip(axes.ravel(), cells):
        box_ids = list(finding.boxes)
        drawn = draw_boxes(images[finding.image_index], table.boxes[box_ids], table.labels[box_ids],
                           class_names)
        ax.imshow(_crop_around(drawn, table.boxes[box_ids]))
        ax.set_title(f"{finding.kind}: {finding.image_id}", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def write_all(output_dir, table, best_iou, report, config, findings, images, fitted=None,
              fitted_best_iou=None, fitted_report=None, seed=0, anchors_name=None):
    """Writes the PNGs into `output_dir`; returns {name: path}. `best_iou` is per non-crowd box."""
    os.makedirs(output_dir, exist_ok=True)
    boxes = table.boxes[~table.crowd]
    threshold = report["threshold"]
    paths = {
        "box_shapes": plot_box_shapes(os.path.join(output_dir, "box_shapes.png"), boxes, best_iou, config,
                                      threshold, fitted, seed, anchors_name),
        "distributions": plot_distributions(os.path.join(output_dir, "distributions.png"), boxes, config),
        "coverage": plot_coverage(os.path.join(output_dir, "coverage.png"), report, fitted_report),
    }
    if fitted is not None:
        paths["box_shapes_fitted"] = plot_box_shapes(os.path.join(output_dir, "box_shapes_fitted.png"),
                                                     boxes, fitted_best_iou, fitted, threshold, None, seed,
                                                     anchors_name="fitted anchors")
    sheet = contact_sheet(os.path.join(output_dir, "suspicious.png"), table, findings, images,
                          table.class_names)
    if sheet:
        paths["suspicious"] = sheet
    return paths


def write_tensorboard(logdir, paths, step=0):
    """Each PNG of `paths` as a TensorBoard image under dataset_doctor/<name>."""
    import tensorflow as tf
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default(step=step):
        for name, path in paths.items():
            with open(path, "rb") as f:
                image = np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))
            tf.summary.image(TENSORBOARD_PREFIX + name, image[None])
    writer.close()
