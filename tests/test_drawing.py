"""Tests for engine/drawing.py: outline where the normalized box says, input left alone."""

import numpy as np
import tensorflow as tf

from engine.drawing import draw_boxes

RED = (255, 0, 0)


def test_outline_lies_on_the_box_edges_and_inside_is_untouched():
    image = np.zeros([61, 81, 3], np.uint8)
    # Rows 0.25 * 60 = 15 .. 0.75 * 60 = 45; columns 0.2 * 80 = 16 .. 0.8 * 80 = 64.
    drawn = draw_boxes(image, [[0.25, 0.2, 0.75, 0.8]], [2], class_names=["cat", "dog"], scores=[0.9])
    assert drawn.dtype == np.uint8 and drawn.shape == image.shape
    np.testing.assert_array_equal(drawn[45, 30], RED)   # bottom edge
    np.testing.assert_array_equal(drawn[40, 16], RED)   # left edge
    np.testing.assert_array_equal(drawn[40, 64], RED)   # right edge
    np.testing.assert_array_equal(drawn[40, 40], [0, 0, 0])  # inside, below the caption
    np.testing.assert_array_equal(drawn[5, 5], [0, 0, 0])    # outside
    assert not image.any()  # the input is not drawn on


def test_accepts_tensors_and_no_boxes():
    image = tf.fill([10, 12, 3], tf.constant(7, tf.uint8))
    drawn = draw_boxes(image, tf.zeros([0, 4]), tf.zeros([0], tf.int32))
    np.testing.assert_array_equal(drawn, np.full([10, 12, 3], 7, np.uint8))
    drawn = draw_boxes(image, tf.constant([[0.0, 0.0, 1.0, 1.0]]), tf.constant([3]), color=(0, 255, 0))
    np.testing.assert_array_equal(drawn[9, 5], [0, 255, 0])
