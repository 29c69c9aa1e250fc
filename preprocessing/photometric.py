"""Photometric distortion: SSD's random brightness, contrast, saturation and hue (paper §3.6).

Follows Caffe SSD's `DistortImage` (src/caffe/util/im_transforms.cpp) with the `distort_param` of
ssd_pascal.py: brightness_delta 32, contrast [0.5, 1.5], saturation [0.5, 1.5], hue_delta 18, each
applied with probability 0.5, in one of two orders picked with probability 0.5:

    brightness, contrast, saturation, hue      or      brightness, saturation, hue, contrast

Images are float32 [H, W, 3], RGB, values in [0, 255]; every op clips back to [0, 255] (Caffe works on
uint8 images, so it saturates after each op too).

Differences from Caffe, on purpose:

* Caffe's "contrast" is a plain scale, `pixel * alpha` (AdjustContrast: `convertTo(out, -1, alpha, 0)`);
  we do the same, not tf.image.adjust_contrast's scaling about the mean.
* Hue: Caffe's AdjustHue adds `delta` ~ U[-18, 18] to OpenCV's 8-bit hue channel (H in [0, 180),
  one unit = 2 degrees), so hue_delta 18 is +-36 degrees; our default range is the same +-36 degrees
  (CAFFE_HUE_DELTA_DEGREES). ssd.pytorch's RandomHue uses +-18 degrees; pass that range to compare.
  Remaining difference, from reading the code: Caffe's uint8 `convertTo` rounds the new hue to a whole
  unit (2 degrees) and saturates it at 0 and 255, so a negative shift that passes hue 0 stops at red
  while a positive one past 180 wraps (HSV2BGR takes the hue modulo 360 degrees); we wrap both ways,
  exactly, with tf.image.adjust_hue, which takes `delta` as a fraction of the full hue circle
  (adjust_hue(red, 120/360) gives green; tested), so we pass degrees / 360.
  The kernel stays: an exact branch-free RGB form (out = max - chroma * clip(2 - |k - 2|, 0, 1),
  k = (n + 6 h) mod 6 per channel) matched it to 2.4e-4 of 255 but took 1.95 ms of CPU against the
  kernel's 1.54 ms on a 300x250 patch.
* Saturation is tf.image.adjust_saturation, the exact HSV kernel. An RGB form of it (each channel moved
  along its line to the max, c * r + max * (1 - r)) was used before; it is the faster of the two only on
  noise images, where the kernel's branches mispredict (1.21 against 2.74 ms on a 300x383 patch, one
  core), and the slower one on pictures: 1.27 against 0.94 ms on a photograph and 1.27 against 1.07
  on the benchmark's synthetic images; the full pipeline went from 363 to 388 images per CPU second.
* Caffe's `RandomOrderChannels` (random_order_prob) is 0.0 in ssd_pascal.py, so it is not implemented;
  DESIGN.md also says the pipeline never swaps channels.
"""

import dataclasses
from typing import Tuple

import tensorflow as tf

PIXEL_MAX = 255.0
DEGREES_PER_HUE_CIRCLE = 360.0
# ssd_pascal.py's distort_param hue_delta: 18 units of OpenCV's 8-bit hue (2 degrees each).
CAFFE_HUE_DELTA_DEGREES = 18 * 2.0
_NUM_DRAWS = 9  # order, then (applies?, amount) for brightness, contrast, saturation, hue


@dataclasses.dataclass(frozen=True)
class PhotometricConfig:
    """Probabilities and ranges of the colour distortion; defaults are ssd_pascal.py's distort_param."""

    brightness_prob: float = 0.5
    brightness_delta_range: Tuple[float, float] = (-32.0, 32.0)   # added to 0-255 pixels
    contrast_prob: float = 0.5
    contrast_factor_range: Tuple[float, float] = (0.5, 1.5)       # pixels multiplied by it
    saturation_prob: float = 0.5
    saturation_factor_range: Tuple[float, float] = (0.5, 1.5)     # HSV saturation multiplied by it
    hue_prob: float = 0.5
    hue_delta_degrees_range: Tuple[float, float] = (-CAFFE_HUE_DELTA_DEGREES, CAFFE_HUE_DELTA_DEGREES)  # wraps at 360
    contrast_first_prob: float = 0.5                              # order (B, C, S, H) vs (B, S, H, C)


def _clip(image):
    return tf.clip_by_value(image, 0.0, PIXEL_MAX)


def _in_range(uniform, value_range):
    """Maps a U[0, 1) draw to U[low, high)."""
    low, high = value_range
    return low + (high - low) * uniform


def distort_colors(image, seed, config: PhotometricConfig = PhotometricConfig()):
    """Random photometric distortion of one image.

    Args:
      image: float32 [H, W, 3], RGB in [0, 255].
      seed: int32 or int64 [2], a stateless seed; the same seed gives the same output.
      config: probabilities and ranges.

    Returns:
      float32 [H, W, 3], RGB in [0, 255]. With every probability 0 it is `image`, unchanged.
    """
    # One draw for every decision and amount: per-op overhead counts at ~250 images/s per core.
    uniforms = tf.unstack(tf.random.stateless_uniform([_NUM_DRAWS], seed))
    contrast_first = uniforms[0] < config.contrast_first_prob

    # Each op runs only when drawn (tf.cond): on a 500x375 image one HSV op costs several ms on a core.
    do_brightness = uniforms[1] < config.brightness_prob
    brightness = _in_range(uniforms[2], config.brightness_delta_range)
    do_contrast = uniforms[3] < config.contrast_prob
    contrast = _in_range(uniforms[4], config.contrast_factor_range)
    do_saturation = uniforms[5] < config.saturation_prob
    saturation = _in_range(uniforms[6], config.saturation_factor_range)
    do_hue = uniforms[7] < config.hue_prob
    hue_turns = _in_range(uniforms[8], config.hue_delta_degrees_range) / DEGREES_PER_HUE_CIRCLE

    def maybe(applies, op, img):
        return tf.cond(applies, lambda: op(img), lambda: img)

    def contrast_op(img):
        return _clip(img * contrast)

    # Saturation and hue are scale-invariant (HSV value is max(R, G, B)), so 0-255 input is fine;
    # both keep each pixel's max channel, so they stay in range up to rounding.
    image = maybe(do_brightness, lambda img: _clip(img + brightness), image)
    image = maybe(do_contrast & contrast_first, contrast_op, image)
    image = maybe(do_saturation, lambda img: tf.image.adjust_saturation(img, saturation), image)
    image = maybe(do_hue, lambda img: _clip(tf.image.adjust_hue(img, hue_turns)), image)
    image = maybe(do_contrast & tf.logical_not(contrast_first), contrast_op, image)
    return image
