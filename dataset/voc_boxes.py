"""The one place where VOC pixel boxes and normalized boxes meet (DESIGN.md: pixels only at the edges).

VOC XML and the VOC devkit's result files use 1-based, inclusive pixel indices: a box covering the
whole W x H image is (xmin, ymin, xmax, ymax) = (1, 1, W, H), and the devkit measures its width as
xmax - xmin + 1 = W. We read pixel k (1-based) as the unit interval [k - 1, k] of the continuous image,
so that box is exactly [0, 0, 1, 1] normalized, and the two conversions below are inverse to each other:

    x_norm_min = (xmin - 1) / W        xmin = x_norm_min * W + 1
    x_norm_max = xmax / W              xmax = x_norm_max * W

Normalized boxes are [ymin, xmin, ymax, xmax] (TensorFlow order); VOC pixel boxes are
(xmin, ymin, xmax, ymax) (devkit order).

COCO is different: its `bbox` is [x, y, width, height] in continuous 0-based pixels with no +1, so
the whole image is [0, 0, W, H]; its two conversions are in dataset/coco.py.
"""

import numpy as np


def voc_pixels_to_normalized(pixel_boxes, width, height):
    """VOC (xmin, ymin, xmax, ymax) 1-based inclusive pixels [N, 4] -> normalized yxyx [N, 4] float32."""
    b = np.asarray(pixel_boxes, dtype=np.float64).reshape(-1, 4)
    out = np.stack([(b[:, 1] - 1.0) / height, (b[:, 0] - 1.0) / width,
                    b[:, 3] / height, b[:, 2] / width], axis=1)
    return out.astype(np.float32)


def normalized_to_voc_pixels(boxes, width, height):
    """Normalized yxyx [N, 4] -> VOC (xmin, ymin, xmax, ymax) 1-based inclusive pixels [N, 4] float64.

    `width`/`height` may be scalars or arrays broadcastable to [N] (one original size per box).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    width = np.asarray(width, dtype=np.float64)
    height = np.asarray(height, dtype=np.float64)
    return np.stack([b[:, 1] * width + 1.0, b[:, 0] * height + 1.0,
                     b[:, 3] * width, b[:, 2] * height], axis=1)
