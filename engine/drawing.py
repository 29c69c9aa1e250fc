"""Boxes drawn on an image, for a human check (PNG files, TensorBoard image summaries), and augmented
training examples written that way (visualize_augmentation.py)."""

import os
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from dataset import label_map, reader
from model import presets
from preprocessing import inputs

DEFAULT_COLOR_RGB = (255, 0, 0)
_LINE_WIDTH_PX = 2


def draw_boxes(image, boxes, labels, class_names: Optional[Sequence[str]] = None, scores=None,
               color: Tuple[int, int, int] = DEFAULT_COLOR_RGB):
    """Draws normalized boxes with their class (and score) on a copy of the image.

    Args:
      image: uint8 [H, W, 3] RGB, numpy array or tensor.
      boxes: [N, 4] normalized [ymin, xmin, ymax, xmax].
      labels: [N] class ids 1..C.
      class_names: C names, name i for class id i + 1 (label-map order); ids are shown without it.
      scores: optional [N] scores, shown after the name with two decimals.
      color: RGB of the boxes and captions.
    Returns:
      uint8 [H, W, 3] numpy array; the input is not modified.
    """
    image = np.asarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    for i, (ymin, xmin, ymax, xmax) in enumerate(boxes):
        corners = [xmin * (width - 1), ymin * (height - 1), xmax * (width - 1), ymax * (height - 1)]
        draw.rectangle(corners, outline=color, width=_LINE_WIDTH_PX)
        label = int(labels[i])
        caption = class_names[label - 1] if class_names is not None else str(label)
        if scores is not None:
            caption += f" {float(np.asarray(scores).reshape(-1)[i]):.2f}"
        draw.text((corners[0] + _LINE_WIDTH_PX, corners[1] + _LINE_WIDTH_PX), caption, fill=color)
    return np.asarray(canvas)


# Only confident detections are drawn; the metrics use all of them.
MIN_DRAWN_SCORE = 0.3


def draw_detections(image, boxes, scores, classes, class_names, min_score=MIN_DRAWN_SCORE,
                    color=(255, 0, 0)):
    """uint8 image [H, W, 3] with the detections of score >= min_score drawn (numpy rows [K, ...])."""
    keep = np.asarray(scores) >= min_score
    return draw_boxes(image, np.asarray(boxes)[keep], np.asarray(classes)[keep], class_names,
                      scores=np.asarray(scores)[keep], color=color)



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
