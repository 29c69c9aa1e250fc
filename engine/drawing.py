"""Boxes drawn on an image, for a human check (detect_ssd.py, TensorBoard image summaries, a live video
app), and augmented training examples written that way (visualize_augmentation.py).

Legibility rules, the same everywhere: one colour per class (a fixed 20-colour palette, cycled for more
classes); the caption ("name 0.87") on a filled background of that colour, in black or white,
whichever contrasts; captions kept inside the image and, where the boxes are close, moved so they do
not cover each other; line width and font size scale with the image. draw_detections draws at most
MAX_DRAWN_DETECTIONS, the highest scores at or above a floor: an early checkpoint's hundreds of
low-score boxes would bury the image.
"""

import os
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from dataset import label_map, reader
from model import presets
from preprocessing import inputs

# Distinct, saturated colours (Kelly's and tab20's families), in an order that keeps neighbouring
# class ids far apart in hue.
PALETTE_RGB = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
)
GROUND_TRUTH_RGB = (255, 255, 255)
_RIM_RGB = (0, 0, 0)
# Only confident detections are drawn, at most this many; the metrics use all of them.
MIN_DRAWN_SCORE = 0.3
MAX_DRAWN_DETECTIONS = 20
_CAPTION_PAD_PX = 2


def class_color(class_id):
    """RGB of class id 1..C (cycles after 20)."""
    return PALETTE_RGB[(int(class_id) - 1) % len(PALETTE_RGB)]


def _text_color(fill):
    # ITU-R BT.601 luma: dark text on light fills, white on dark ones.
    return (0, 0, 0) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 140 else (255, 255, 255)


def _sizes(height, width):
    """(line width, font size) in pixels for an image: 2 and 11 at 300 px, growing with the image."""
    side = min(height, width)
    return max(1, min(2 + side // 400, 6)), int(np.clip(side / 27, 10, 36))


def layout_captions(image_height, image_width, boxes_px, sizes):
    """Top-left corners for captions of `sizes` [(w, h)], one per box [x0, y0, x1, y1] in pixels, in
    priority order (earlier ones get the better place).

    Tried in turn: above the box's top-left corner, inside it at the top, below its bottom, inside at
    the bottom; each shifted to lie inside the image. The first that overlaps no caption placed before
    wins; if all overlap, the first. Returns [(x, y)].
    """
    placed, corners = [], []
    for (x0, y0, x1, y1), (w, h) in zip(boxes_px, sizes):
        candidates = [(x0, y0 - h), (x0, y0), (x0, y1), (x0, y1 - h)]
        candidates = [(int(np.clip(x, 0, max(image_width - w, 0))), int(np.clip(y, 0, max(image_height - h, 0))))
                      for x, y in candidates]
        choice = next((c for c in candidates if not any(
            c[0] < px + pw and px < c[0] + w and c[1] < py + ph and py < c[1] + h
            for px, py, pw, ph in placed)), candidates[0])
        placed.append((choice[0], choice[1], w, h))
        corners.append(choice)
    return corners


def draw_boxes(image, boxes, labels, class_names: Optional[Sequence[str]] = None, scores=None,
               color: Optional[Tuple[int, int, int]] = None):
    """Draws normalized boxes with their class (and score) captions on a copy of the image.

    Args:
      image: uint8 [H, W, 3] RGB, numpy array or tensor.
      boxes: [N, 4] normalized [ymin, xmin, ymax, xmax], in caption priority order (best first).
      labels: [N] class ids 1..C.
      class_names: C names, name i for class id i + 1 (label-map order); ids are shown without it.
      scores: optional [N] scores, shown after the name with two decimals.
      color: one RGB for every box (e.g. GROUND_TRUTH_RGB); None: the class's colour.
    Returns:
      uint8 [H, W, 3] numpy array; the input is not modified.
    """
    image = np.asarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    scores = None if scores is None else np.asarray(scores, np.float32).reshape(-1)
    line_width, font_size = _sizes(height, width)
    font = ImageFont.load_default(size=font_size)
    colors = [color or class_color(label) for label in labels]
    corners_px = [[xmin * (width - 1), ymin * (height - 1), xmax * (width - 1), ymax * (height - 1)]
                  for ymin, xmin, ymax, xmax in boxes]
    captions = [(class_names[label - 1] if class_names is not None else str(label)) +
                ("" if scores is None else f" {scores[i]:.2f}") for i, label in enumerate(labels)]
    text_boxes = [draw.textbbox((0, 0), caption, font=font) for caption in captions]
    sizes = [(r - l + 2 * _CAPTION_PAD_PX, b - t + 2 * _CAPTION_PAD_PX) for l, t, r, b in text_boxes]
    # Boxes from the last to the first, so the best lies on top; then every caption over every box. Each
    # line has a 1-pixel dark rim on both sides, so a class colour stays visible on a background or an
    # object of a similar colour (a green box on green stripes).
    for (x0, y0, x1, y1), box_color in reversed(list(zip(corners_px, colors))):
        draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=_RIM_RGB, width=line_width + 2)
        draw.rectangle([x0, y0, x1, y1], outline=box_color, width=line_width)
    placements = layout_captions(height, width, corners_px, sizes)
    for i in reversed(range(len(captions))):
        (x, y), (w, h), (left, top, _, _) = placements[i], sizes[i], text_boxes[i]
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=colors[i])
        draw.text((x + _CAPTION_PAD_PX - left, y + _CAPTION_PAD_PX - top), captions[i],
                  fill=_text_color(colors[i]), font=font)
    return np.asarray(canvas)


def top_detections(scores, min_score=MIN_DRAWN_SCORE, max_drawn=MAX_DRAWN_DETECTIONS):
    """Indices of the at most `max_drawn` highest scores >= min_score, best first."""
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    return order[scores[order] >= min_score][:max_drawn]


def draw_detections(image, boxes, scores, classes, class_names, min_score=MIN_DRAWN_SCORE, color=None,
                    max_drawn=MAX_DRAWN_DETECTIONS):
    """uint8 image [H, W, 3] with the top `max_drawn` detections of score >= min_score drawn, in
    their class colours (numpy rows [K, ...]; float class ids, as the SavedModel returns, are fine)."""
    keep = top_detections(scores, min_score, max_drawn)
    return draw_boxes(image, np.asarray(boxes).reshape(-1, 4)[keep],
                      np.asarray(classes).reshape(-1)[keep].astype(np.int64), class_names,
                      scores=np.asarray(scores).reshape(-1)[keep], color=color)


TENSORBOARD_SUBDIR = "tensorboard"
SUMMARY_TAG = "augmented_inputs"


def write_augmented_samples(data_dir, split, num_samples, output_dir, seed, model="ssd300_vgg16"):
    """Draws `num_samples` augmented training examples (PNG files + TensorBoard images); returns the paths.

    The examples come from preprocessing.inputs.augmented_examples, the training input path stopped
    before mean subtraction and target encoding, so what is drawn is what the model trains on.
    """
    class_names = reader.read_label_map(os.path.join(data_dir, label_map.LABEL_MAP_FILENAME))
    config = presets.get(model, len(class_names))
    examples = inputs.augmented_examples(data_dir, config, inputs.TrainInputConfig(seed=seed), split)
    os.makedirs(output_dir, exist_ok=True)
    writer = tf.summary.create_file_writer(os.path.join(output_dir, TENSORBOARD_SUBDIR))
    paths = []
    with writer.as_default():
        for index, (image, boxes, labels) in enumerate(examples.take(num_samples)):
            drawn = draw_boxes(image.numpy(), boxes.numpy(), labels.numpy(), class_names)
            path = os.path.join(output_dir, "augmented_%05d.png" % index)
            Image.fromarray(drawn).save(path)
            paths.append(path)
            tf.summary.image(SUMMARY_TAG, drawn[None], step=index)
    writer.close()
    return paths
