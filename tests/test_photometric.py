"""Tests for preprocessing/photometric.py: hand-computed colour changes, range, identity, determinism."""

import dataclasses

import numpy as np
import tensorflow as tf

from preprocessing.photometric import PhotometricConfig, distort_colors

NOTHING = PhotometricConfig(brightness_prob=0.0, contrast_prob=0.0, saturation_prob=0.0, hue_prob=0.0)
SEED = tf.constant([3, 4], tf.int32)


def _pixels(*rgb):
    return tf.constant([list(rgb)], tf.float32)  # [1, len(rgb), 3]


def _distort(image, config, seed=SEED):
    return distort_colors(image, seed, config).numpy()


def test_all_probabilities_zero_leave_the_image_unchanged():
    image = tf.random.stateless_uniform([6, 8, 3], [1, 2], maxval=255.0)
    for seed in range(5):
        np.testing.assert_array_equal(_distort(image, NOTHING, tf.constant([seed, 0])), image.numpy())


def test_brightness_adds_its_delta_and_clips():
    config = dataclasses.replace(NOTHING, brightness_prob=1.0, brightness_delta_range=(32.0, 32.0))
    out = _distort(_pixels([100, 0, 240], [255, 10, 20]), config)
    np.testing.assert_allclose(out[0], [[132, 32, 255], [255, 42, 52]])


def test_contrast_scales_pixels_like_caffe_and_clips():
    config = dataclasses.replace(NOTHING, contrast_prob=1.0, contrast_factor_range=(1.5, 1.5))
    out = _distort(_pixels([100, 0, 200]), config)
    np.testing.assert_allclose(out[0], [[150, 0, 255]])


def test_saturation_halves_the_hsv_saturation():
    config = dataclasses.replace(NOTHING, saturation_prob=1.0, saturation_factor_range=(0.5, 0.5))
    # V = 200, S = 150/200 -> 75/200: min becomes 125; G kept at 1/3 of the way from min to max.
    out = _distort(_pixels([200, 100, 50]), config)
    np.testing.assert_allclose(out[0], [[200, 150, 125]], atol=1e-3)


def test_hue_delta_is_in_degrees():
    config = dataclasses.replace(NOTHING, hue_prob=1.0, hue_delta_degrees_range=(120.0, 120.0))
    # Red is at 0 degrees, green at 120, blue at 240.
    out = _distort(_pixels([255, 0, 0], [0, 255, 0]), config)
    np.testing.assert_allclose(out[0], [[0, 255, 0], [0, 0, 255]], atol=1e-3)


def test_the_two_caffe_orders_differ_where_contrast_clips():
    both = dataclasses.replace(NOTHING, contrast_prob=1.0, contrast_factor_range=(1.5, 1.5),
                               saturation_prob=1.0, saturation_factor_range=(0.5, 0.5))
    image = _pixels([200, 100, 50])
    # Contrast first: (255 clipped, 150, 75); then S 180/255 -> 90/255: min 165, G at 5/12 of the way.
    contrast_first = _distort(image, dataclasses.replace(both, contrast_first_prob=1.0))
    np.testing.assert_allclose(contrast_first[0], [[255, 202.5, 165]], atol=1e-3)
    # Saturation first: (200, 150, 125); then x1.5: (255 clipped, 225, 187.5).
    contrast_last = _distort(image, dataclasses.replace(both, contrast_first_prob=0.0))
    np.testing.assert_allclose(contrast_last[0], [[255, 225, 187.5]], atol=1e-3)


def test_output_stays_in_range_and_depends_only_on_the_seed():
    distort = tf.function(lambda image, seed: distort_colors(image, seed, PhotometricConfig(
        brightness_prob=1.0, contrast_prob=1.0, saturation_prob=1.0, hue_prob=1.0)))
    image = tf.random.stateless_uniform([6, 8, 3], [5, 6], maxval=255.0)
    image = tf.tensor_scatter_nd_update(image, [[0, 0], [0, 1]], [[0.0, 0.0, 0.0], [255.0] * 3])
    outputs = [distort(image, tf.constant([seed, 1], tf.int64)).numpy() for seed in range(8)]
    for out in outputs:
        assert out.min() >= 0.0 and out.max() <= 255.0
    np.testing.assert_array_equal(distort(image, tf.constant([0, 1], tf.int64)).numpy(), outputs[0])
    assert not np.allclose(outputs[0], outputs[1])


def test_default_hue_range_is_caffe_hue_delta_18_in_opencv_units():
    # ssd_pascal.py hue_delta: 18 on OpenCV's 8-bit hue (0-180 for 360 degrees) -> +-36 degrees.
    assert PhotometricConfig().hue_delta_degrees_range == (-36.0, 36.0)
    # At the range's end, pure red (hue 0) turns to hue 36 degrees: R 255, G 255 * 36/60 = 153, B 0.
    config = dataclasses.replace(NOTHING, hue_prob=1.0, hue_delta_degrees_range=(36.0, 36.0))
    red = tf.constant([[[255.0, 0.0, 0.0]]])
    np.testing.assert_allclose(distort_colors(red, tf.constant([1, 2]), config).numpy(), [[[255, 153, 0]]],
                               atol=0.5)
