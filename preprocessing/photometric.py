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
* Hue: Caffe adds `delta` to OpenCV's 8-bit hue channel, whose unit is 2 degrees, so its ±18 is really
  ±36 degrees (and saturates instead of wrapping). We follow the paper-level reading "±18 degrees" and
  wrap around the circle: tf.image.adjust_hue takes `delta` as a fraction of the full hue circle
  (adjust_hue(red, 120/360) gives green; tested), so we pass degrees / 360.
* Caffe's `RandomOrderChannels` (random_order_prob) is 0.0 in ssd_pascal.py, so it is not implemented;
  DESIGN.md also says the pipeline never swaps channels.
"""

import dataclasses
from typing import Tuple

import tensorflow as tf

PIXEL_MAX = 255.0
DEGREES_PER_HUE_CIRCLE = 360.0
_NUM_DRAWS = 9  # order, 4 x (apply?, amount)


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
    hue_delta_degrees_range: Tuple[float, float] = (-18.0, 18.0)  # added to HSV hue, wraps at 360
    contrast_first_prob: float = 0.5                              # order (B, C, S, H) vs (B, S, H, C)


def _clip(image):
    return tf.clip_by_value(image, 0.0, PIXEL_MAX)


def _draw(seed, value_range):
    low, high = value_range
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high)


def _applies(seed, prob):
    """A scalar bool that is True with probability `prob` (never for 0, always for 1)."""
    return tf.random.stateless_uniform([], seed) < prob


def distort_colors(image, seed, config: PhotometricConfig = PhotometricConfig()):
    """Random photometric distortion of one image.

    Args:
      image: float32 [H, W, 3], RGB in [0, 255].
      seed: int32 or int64 [2], a stateless seed; the same seed gives the same output.
      config: probabilities and ranges.

    Returns:
      float32 [H, W, 3], RGB in [0, 255]. With every probability 0 it is `image`, unchanged.
    """
    seeds = tf.random.experimental.stateless_split(seed, _NUM_DRAWS)
    contrast_first = _applies(seeds[0], config.contrast_first_prob)

    # Brightness and contrast are cheap elementwise ops: an identity amount when not applied avoids
    # a branch (x + 0 and x * 1 are exact, so probability 0 leaves the image bit-identical).
    brightness = tf.where(_applies(seeds[1], config.brightness_prob),
                          _draw(seeds[2], config.brightness_delta_range), 0.0)
    contrast = tf.where(_applies(seeds[3], config.contrast_prob),
                        _draw(seeds[4], config.contrast_factor_range), 1.0)
    do_saturation = _applies(seeds[5], config.saturation_prob)
    saturation = _draw(seeds[6], config.saturation_factor_range)
    do_hue = _applies(seeds[7], config.hue_prob)
    hue_turns = _draw(seeds[8], config.hue_delta_degrees_range) / DEGREES_PER_HUE_CIRCLE

    def hsv_part(img):
        # The HSV round trips are the expensive part, so they run only when drawn. adjust_saturation
        # and adjust_hue are scale-invariant (HSV value is max(R, G, B)), so 0-255 input is fine.
        img = tf.cond(do_saturation, lambda: tf.image.adjust_saturation(img, saturation), lambda: img)
        img = tf.cond(do_hue, lambda: tf.image.adjust_hue(img, hue_turns), lambda: img)
        return _clip(img)

    image = _clip(image + brightness)
    image = tf.cond(contrast_first, lambda: _clip(image * contrast), lambda: image)
    image = hsv_part(image)
    image = tf.cond(contrast_first, lambda: image, lambda: _clip(image * contrast))
    return image
