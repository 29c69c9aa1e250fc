"""Tests for preprocessing/augment.py: the composed augmentation on painted boxes, in graph mode."""

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import geometric, photometric
from preprocessing.augment import AugmentConfig, augment, split_seeds
from preprocessing.geometric import CropConfig
from preprocessing.photometric import PhotometricConfig

HEIGHT, WIDTH = 60, 80
# Non-overlapping pixel boxes [ymin, xmin, ymax, xmax], each painted in its own colour; label = index + 1.
PAINTED_BOXES_PX = np.array([[5, 5, 25, 35], [30, 40, 55, 75], [8, 50, 24, 70]], np.float32)
PAINT_RGB = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.float32)
BOXES = tf.constant(PAINTED_BOXES_PX / [HEIGHT, WIDTH, HEIGHT, WIDTH], tf.float32)
LABELS = tf.constant([1, 2, 3], tf.int32)
NO_COLOUR_CHANGE = AugmentConfig(photometric=PhotometricConfig(
    brightness_prob=0.0, contrast_prob=0.0, saturation_prob=0.0, hue_prob=0.0))
DEFAULT = AugmentConfig()  # one instance: tf.function retraces for every new Python config object
NUM_SEEDS = 30

_augment = tf.function(augment, reduce_retracing=True)


def _painted_image():
    image = np.zeros([HEIGHT, WIDTH, 3], np.float32)  # black: differs from paint and from the mean fill
    for (ymin, xmin, ymax, xmax), rgb in zip(PAINTED_BOXES_PX.astype(int), PAINT_RGB):
        image[ymin:ymax, xmin:xmax] = rgb
    return tf.constant(image)


def _seed(i):
    return tf.constant([i, 2026], tf.int64)


def _check_paint_inside_boxes(image, boxes, labels, margin_px, min_inside):
    """Each output box covers the paint of its label: at least min_inside of the pixels of the box
    shrunk by margin_px have that colour, and no paint lies more than margin_px outside the box."""
    height, width = image.shape[:2]
    for box, label in zip(boxes, labels):
        ymin, xmin, ymax, xmax = np.round(box * [height, width, height, width]).astype(int)
        # Majority colour: resampling blends edge pixels, so half paint or more counts as paint.
        painted = np.all(np.abs(image - PAINT_RGB[label - 1]) < 127.5, axis=-1)
        interior = painted[ymin + margin_px:ymax - margin_px, xmin + margin_px:xmax - margin_px]
        if interior.size > 0:
            assert interior.mean() >= min_inside, (box, label, interior.mean())
        outside = painted.copy()
        outside[max(ymin - margin_px, 0):ymax + margin_px, max(xmin - margin_px, 0):xmax + margin_px] = False
        assert not outside.any(), (box, label, outside.sum())


def test_geometry_and_labels_stay_aligned_exactly_before_resizing():
    kept_boxes = 0
    for i in range(NUM_SEEDS):
        image, boxes, labels = _augment(_painted_image(), BOXES, LABELS, _seed(i), NO_COLOUR_CHANGE)
        _check_paint_inside_boxes(image.numpy(), boxes.numpy(), labels.numpy(), 0, 1.0)
        kept_boxes += len(labels)
    assert kept_boxes > NUM_SEEDS  # most crops keep some boxes


def test_geometry_stays_aligned_after_resizing():
    for i in range(NUM_SEEDS):
        image, boxes, labels = _augment(_painted_image(), BOXES, LABELS, _seed(i), NO_COLOUR_CHANGE)
        resized = tf.image.resize(image, [48, 48]).numpy()
        _check_paint_inside_boxes(resized, boxes.numpy(), labels.numpy(), 1, 0.9)


def test_fused_resize_keeps_geometry_and_boxes():
    for i in range(NUM_SEEDS // 2):
        image, boxes, labels = _augment(_painted_image(), BOXES, LABELS, _seed(i), NO_COLOUR_CHANGE,
                                        output_size=(48, 40))
        assert image.shape == (48, 40, 3)
        _check_paint_inside_boxes(image.numpy(), boxes.numpy(), labels.numpy(), 1, 0.9)
        _, unresized_boxes, unresized_labels = _augment(_painted_image(), BOXES, LABELS, _seed(i),
                                                        NO_COLOUR_CHANGE)
        np.testing.assert_array_equal(boxes, unresized_boxes)
        np.testing.assert_array_equal(labels, unresized_labels)


def test_kept_boxes_are_normalized_with_positive_area_and_extras_follow_labels():
    shapes = set()
    for i in range(NUM_SEEDS):
        image, boxes, labels, extras = _augment(
            _painted_image(), BOXES, LABELS, _seed(i), DEFAULT, {"code": LABELS * 10})
        boxes = boxes.numpy()
        assert np.all((boxes >= 0.0) & (boxes <= 1.0))
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        np.testing.assert_array_equal(extras["code"], labels.numpy() * 10)
        assert image.numpy().min() >= 0.0 and image.numpy().max() <= 255.0
        shapes.add(image.shape)
    assert len(shapes) > NUM_SEEDS // 2  # zoom-out and crop really vary the output size


def _augment_step_by_step(image, boxes, labels, seed, config):
    """The plain version: distort the whole image, build the canvas, crop it, flip."""
    photometric_seed, geometric_seed, flip_seed = split_seeds(seed)
    image = photometric.distort_colors(image, photometric_seed, config.photometric)
    canvas_hw, offset_yx, window, boxes, keep = geometric.draw_zoom_out_and_crop(
        tf.shape(image)[:2], boxes, geometric_seed, config.zoom_out, config.crop)
    canvas = geometric.zoom_out_image(image, canvas_hw, offset_yx, config.zoom_out.fill_rgb)
    image = geometric.crop_image(canvas, window)
    flips = tf.random.stateless_uniform([], flip_seed) < config.flip_prob
    image, boxes = geometric.flip_left_right(image, boxes, flips)
    return image, boxes, tf.gather(labels, keep)


def test_augment_equals_the_step_by_step_version():
    config = AugmentConfig(photometric=PhotometricConfig(brightness_prob=0.8, contrast_prob=0.8,
                                                         saturation_prob=0.8, hue_prob=0.8))
    image = tf.random.stateless_uniform([HEIGHT, WIDTH, 3], [4, 4], maxval=255.0)
    for i in range(12):
        fast = _augment(image, BOXES, LABELS, _seed(i), config)
        plain = _augment_step_by_step(image, BOXES, LABELS, _seed(i), config)
        np.testing.assert_allclose(fast[0], plain[0], atol=1e-3)
        np.testing.assert_array_equal(fast[1], plain[1])
        np.testing.assert_array_equal(fast[2], plain[2])


def test_same_seed_same_output_different_seeds_differ():
    first = _augment(_painted_image(), BOXES, LABELS, _seed(7), DEFAULT)
    again = _augment(_painted_image(), BOXES, LABELS, _seed(7), DEFAULT)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other = _augment(_painted_image(), BOXES, LABELS, _seed(8), DEFAULT)
    assert first[0].shape != other[0].shape or not np.array_equal(first[0], other[0])


def test_uint8_input_gives_the_float_input_output():
    image_uint8 = tf.cast(_painted_image(), tf.uint8)
    for i in range(4):
        for output_size in (None, (30, 40)):
            from_uint8 = augment(image_uint8, BOXES, LABELS, _seed(i), DEFAULT, output_size=output_size)
            from_float = augment(_painted_image(), BOXES, LABELS, _seed(i), DEFAULT, output_size=output_size)
            assert from_uint8[0].dtype == tf.float32
            for a, b in zip(from_uint8, from_float):
                np.testing.assert_array_equal(a, b)


def test_zero_boxes_flow_through():
    for i in range(10):
        image, boxes, labels = _augment(
            _painted_image(), tf.zeros([0, 4]), tf.zeros([0], tf.int32), _seed(i), DEFAULT)
        assert boxes.shape == (0, 4) and labels.shape == (0,)
        assert np.all(np.isfinite(image.numpy()))


def test_a_crop_can_drop_every_box():
    # Only the unconstrained patch sampler, small patches, one tiny box in a corner.
    config = AugmentConfig(crop=CropConfig(min_ious=(0.0,), scale_range=(0.3, 0.4)))
    tiny = tf.constant([[0.0, 0.0, 0.05, 0.05]])
    emptied = 0
    for i in range(20):
        image, boxes, labels, extras = _augment(_painted_image(), tiny, tf.constant([4]), _seed(i), config,
                                                {"difficult": tf.constant([True])})
        if labels.shape[0] == 0:
            emptied += 1
            assert boxes.shape == (0, 4) and extras["difficult"].shape == (0,)
            assert image.shape[0] > 0 and image.shape[1] > 0
    assert emptied > 0


def test_parallel_tf_data_map_gives_the_same_output_as_direct_calls():
    sizes = [(60, 80), (37, 50), (90, 41), (60, 80)]
    num_boxes = [3, 0, 1, 2]

    def example(i):
        height, width = sizes[i]
        image = tf.random.stateless_uniform([height, width, 3], [i, 0], maxval=255.0)
        return image, BOXES[:num_boxes[i]], LABELS[:num_boxes[i]], _seed(i)

    dataset = tf.data.Dataset.from_generator(
        lambda: (example(i) for i in range(len(sizes))),
        output_signature=(tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([None, 4], tf.float32),
                          tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int64)))
    mapped = dataset.map(lambda *args: augment(*args), num_parallel_calls=2, deterministic=True)
    for i, outputs in enumerate(mapped):
        for from_map, direct in zip(outputs, augment(*example(i))):
            np.testing.assert_array_equal(from_map, direct)


def test_augmentation_names_agree_and_unknown_policy_is_refused():
    from engine import train_config
    from preprocessing import augment as augment_lib
    assert train_config.AUGMENTATIONS == augment_lib.policy_names()
    image = tf.zeros([8, 8, 3], tf.uint8)
    with pytest.raises(ValueError, match="unknown augmentation 'nope'; known: caffe"):
        augment(image, tf.zeros([0, 4]), tf.zeros([0], tf.int32), tf.constant([1, 2]),
                AugmentConfig(policy="nope"))
