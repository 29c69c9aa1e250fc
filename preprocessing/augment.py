"""SSD training augmentation, per image: photometric -> zoom-out -> min-IoU crop -> flip (DESIGN.md).

`augment` is a pure function of its inputs and a stateless seed, so it gives the same output for the
same seed under a parallel tf.data map, and it runs in graph mode with dynamic H, W and N (N may be 0;
a crop may also drop every box, which leaves N = 0: an all-background image downstream).

Resizing to the preset's input size and mean subtraction come after this, in the input function.

    image   float32 [H, W, 3]  RGB, 0-255, not mean-subtracted
    boxes   float32 [N, 4]     [ymin, xmin, ymax, xmax] normalized to the image
    labels  int32   [N]
    seed    int32 / int64 [2]
"""

import dataclasses
from typing import Dict, Optional

import tensorflow as tf

from preprocessing import geometric
from preprocessing import photometric
from preprocessing.geometric import CropConfig, ZoomOutConfig
from preprocessing.photometric import PhotometricConfig

_NUM_STEPS = 3  # photometric, zoom-out + crop, flip


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Every probability and range of the augmentation; the defaults are ssd_pascal.py's."""

    photometric: PhotometricConfig = PhotometricConfig()
    zoom_out: ZoomOutConfig = ZoomOutConfig()
    crop: CropConfig = CropConfig()
    flip_prob: float = 0.5   # transform_param mirror: true


def augment(image, boxes, labels, seed, config: AugmentConfig = AugmentConfig(),
            extras: Optional[Dict[str, tf.Tensor]] = None):
    """Random SSD augmentation of one image and its boxes.

    Args:
      image: float32 [H, W, 3], RGB in [0, 255].
      boxes: float32 [N, 4], normalized [ymin, xmin, ymax, xmax].
      labels: int32 [N].
      seed: int32 or int64 [2], stateless seed.
      config: probabilities and ranges.
      extras: optional dict of other per-box tensors [N, ...] (e.g. difficult flags), kept, dropped and
        reordered exactly like labels.
    Returns:
      (image float32 [H', W', 3] in [0, 255], boxes float32 [K, 4] normalized to the new image and
      inside [0, 1] with positive area, labels int32 [K]), plus the gathered extras dict as a fourth
      element when `extras` was given.
    """
    photometric_seed, geometric_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, _NUM_STEPS))
    image = photometric.distort_colors(image, photometric_seed, config.photometric)

    canvas_hw, offset_yx, window, boxes, keep = geometric.draw_zoom_out_and_crop(
        tf.shape(image)[:2], boxes, geometric_seed, config.zoom_out, config.crop)
    image = geometric.zoom_out_and_crop_image(image, canvas_hw, offset_yx, window,
                                              config.zoom_out.fill_rgb)
    labels = tf.gather(labels, keep)

    flips = tf.random.stateless_uniform([], flip_seed) < config.flip_prob
    image, boxes = geometric.flip_left_right(image, boxes, flips)
    if extras is None:
        return image, boxes, labels
    return image, boxes, labels, {name: tf.gather(value, keep) for name, value in extras.items()}
