"""Tests for preprocessing/geometric.py: zoom-out, the batch sampler, box cropping, flip."""

import numpy as np
import tensorflow as tf

from model import box_ops
from preprocessing import geometric
from preprocessing.geometric import CropConfig, ZoomOutConfig

FILL = (1.0, 2.0, 3.0)


def _seed(i):
    return tf.constant([i, 11], tf.int32)


def test_zoom_out_canvas_size_and_offset():
    image_hw = tf.constant([60, 80])
    canvas_hw, offset_yx = geometric.draw_zoom_out(image_hw, _seed(0), ZoomOutConfig(prob=0.0))
    np.testing.assert_array_equal(canvas_hw, [60, 80])
    np.testing.assert_array_equal(offset_yx, [0, 0])
    ratios = []
    for i in range(20):
        canvas_hw, offset_yx = geometric.draw_zoom_out(image_hw, _seed(i), ZoomOutConfig(prob=1.0))
        ratio = canvas_hw.numpy()[0] / 60.0
        ratios.append(ratio)
        # The same ratio for both sides (Caffe ExpandImage), up to the floor to whole pixels.
        assert abs(canvas_hw.numpy()[1] - 80 * ratio) < 80 / 60 + 1e-6
        assert np.all(offset_yx.numpy() >= 0) and np.all(offset_yx.numpy() + [60, 80] <= canvas_hw.numpy())
    assert 1.0 <= min(ratios) and max(ratios) <= 4.0 and max(ratios) > 2.0


def test_zoom_out_image_places_the_image_on_a_filled_canvas():
    image = tf.fill([2, 3, 3], 200.0)
    canvas = geometric.zoom_out_image(image, tf.constant([4, 6]), tf.constant([1, 2]), FILL).numpy()
    assert canvas.shape == (4, 6, 3)
    np.testing.assert_allclose(canvas[1:3, 2:5], 200.0)
    np.testing.assert_allclose(canvas[0, 0], FILL)
    np.testing.assert_allclose(canvas[3, 5], FILL)
    np.testing.assert_allclose(canvas[1, 1], FILL)
    assert np.isclose(canvas, 200.0).all(axis=-1).sum() == 6


def test_slice_and_pad_equals_canvas_then_crop():
    image = tf.random.stateless_uniform([7, 9, 3], [1, 1], maxval=255.0)
    zoom, crop = ZoomOutConfig(prob=0.7, fill_rgb=FILL), CropConfig(min_ious=(0.0,), scale_range=(0.1, 1.0))
    box = tf.constant([[0.2, 0.2, 0.6, 0.7]])
    padded_patches = 0
    for i in range(60):
        canvas_hw, offset_yx, window, _, _ = geometric.draw_zoom_out_and_crop(
            tf.constant([7, 9]), box, _seed(i), zoom, crop)
        naive = geometric.crop_image(geometric.zoom_out_image(image, canvas_hw, offset_yx, FILL), window)
        begin, size, paddings = geometric.image_part_in_window(tf.constant([7, 9]), offset_yx, window)
        inside = tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([size, [-1]], 0))
        fused = geometric.pad_with_fill(inside, paddings, FILL)
        np.testing.assert_allclose(fused, naive, atol=1e-4)
        padded_patches += int(np.isclose(naive.numpy(), FILL).all(axis=-1).any())
    assert padded_patches > 5  # both branches of the fused version were exercised


def _near_image_edge(sample_on_canvas, image_start, image_size):
    """Samples within one pixel of where the image meets the fill (ends included), along one axis."""
    image_end = image_start + image_size
    return (((sample_on_canvas >= image_start - 1) & (sample_on_canvas <= image_start))
            | ((sample_on_canvas >= image_end - 1) & (sample_on_canvas <= image_end)))


def test_fused_resize_equals_canvas_crop_then_resize_away_from_image_edges():
    image_hw, output_hw = (17, 23), (12, 14)
    image = tf.random.stateless_uniform(image_hw + (3,), [2, 2], maxval=255.0)
    zoom, crop = ZoomOutConfig(prob=0.7, fill_rgb=FILL), CropConfig(min_ious=(0.0,), scale_range=(0.1, 1.0))
    compared = 0
    for i in range(40):
        canvas_hw, offset_yx, window, _, _ = geometric.draw_zoom_out_and_crop(
            tf.constant(image_hw), tf.constant([[0.2, 0.2, 0.6, 0.7]]), _seed(i), zoom, crop)
        canvas = geometric.zoom_out_image(image, canvas_hw, offset_yx, FILL)
        naive = tf.image.resize(geometric.crop_image(canvas, window), output_hw).numpy()
        begin, size = geometric.image_part_for_resizing(tf.constant(image_hw), offset_yx, window)
        part = tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([size, [-1]], 0))
        fused = geometric.resize_window(part, offset_yx + begin, window, output_hw, FILL).numpy()
        assert fused.shape == output_hw + (3,)
        y, x, height, width = window.numpy()
        sample_y = y + (np.arange(output_hw[0]) + 0.5) * height / output_hw[0] - 0.5
        sample_x = x + (np.arange(output_hw[1]) + 0.5) * width / output_hw[1] - 0.5
        near_y = _near_image_edge(sample_y, offset_yx.numpy()[0], image_hw[0])
        near_x = _near_image_edge(sample_x, offset_yx.numpy()[1], image_hw[1])
        # When enlarging, resize clamps samples outside the window to its edge pixel; resize_window
        # reads the image pixel beyond instead.
        clamped_y = (sample_y < y) | (sample_y > y + height - 1)
        clamped_x = (sample_x < x) | (sample_x > x + width - 1)
        same = ~(near_y[:, None] | near_x[None, :] | clamped_y[:, None] | clamped_x[None, :])
        np.testing.assert_allclose(fused[same], naive[same], atol=1e-2)  # of 255
        compared += same.sum()
    assert compared > 0.5 * 40 * output_hw[0] * output_hw[1]



def test_fused_resize_flipped_is_the_mirror_of_unflipped_on_both_paths():
    image_hw, output_hw = (17, 23), (12, 14)
    image = tf.random.stateless_uniform(image_hw + (3,), [3, 3], maxval=255.0)
    zoom, crop = ZoomOutConfig(prob=0.7, fill_rgb=FILL), CropConfig(min_ious=(0.0,), scale_range=(0.1, 1.0))
    paths = set()
    for i in range(30):
        _, offset_yx, window, _, _ = geometric.draw_zoom_out_and_crop(
            tf.constant(image_hw), tf.constant([[0.2, 0.2, 0.6, 0.7]]), _seed(i), zoom, crop)
        begin, size = geometric.image_part_for_resizing(tf.constant(image_hw), offset_yx, window)
        part = tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([size, [-1]], 0))
        plain = geometric.resize_window(part, offset_yx + begin, window, output_hw, FILL).numpy()
        flipped = geometric.resize_window(part, offset_yx + begin, window, output_hw, FILL, flip=True).numpy()
        # float rounding of the mirrored sample coordinates only
        np.testing.assert_allclose(flipped, plain[:, ::-1], atol=1e-2)  # of 255
        paths.add(bool(np.all(offset_yx + begin == window[:2])) and bool(np.all(size == window[2:])))
        # outside the image the fill is exact, not interpolated towards it
        fill_pixels = np.all(np.abs(plain - FILL) < 1e-3, axis=-1)
        np.testing.assert_array_equal(plain[fill_pixels], np.broadcast_to(np.float32(FILL), plain[fill_pixels].shape))
    assert paths == {True, False}

def test_fused_resize_of_a_window_that_misses_the_image_is_all_fill():
    image_hw, offset_yx, window = tf.constant([4, 4]), tf.constant([0, 0]), tf.constant([8, 8, 8, 8])
    begin, size = geometric.image_part_for_resizing(image_hw, offset_yx, window)
    np.testing.assert_array_equal(begin, [2, 2])  # a 2 x 2 corner still feeds crop_and_resize
    np.testing.assert_array_equal(size, [2, 2])
    part = tf.slice(tf.fill([4, 4, 3], 200.0), tf.concat([begin, [0]], 0), tf.concat([size, [-1]], 0))
    resized = geometric.resize_window(part, offset_yx + begin, window, (5, 6), FILL).numpy()
    np.testing.assert_allclose(resized, np.broadcast_to(FILL, (5, 6, 3)), atol=1e-4)


def test_crop_boxes_keeps_centres_inside_clips_and_normalizes():
    window = tf.constant([10, 20, 40, 50])  # y, x, height, width: rows 10..50, columns 20..70
    boxes = tf.constant([[20.0, 30.0, 60.0, 90.0],    # centre (40, 60) inside: clipped to [20, 30, 50, 70]
                         [0.0, 0.0, 10.0, 10.0],      # centre (5, 5) outside
                         [10.0, 20.0, 50.0, 70.0]])   # the window itself
    cropped, keep = geometric.crop_boxes(boxes, window)
    np.testing.assert_array_equal(keep, [0, 2])
    np.testing.assert_allclose(cropped, [[0.25, 0.2, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])


def test_crop_boxes_can_drop_every_box():
    cropped, keep = geometric.crop_boxes(tf.constant([[0.0, 0.0, 4.0, 4.0]]), tf.constant([10, 10, 5, 5]))
    assert cropped.shape == (0, 4) and keep.shape == (0,)
    cropped, keep = geometric.crop_boxes(tf.zeros([0, 4]), tf.constant([0, 0, 5, 5]))
    assert cropped.shape == (0, 4) and keep.shape == (0,)


def test_patch_window_truncates_to_whole_pixels_inside_the_canvas():
    window = geometric.patch_window(tf.constant([0.25, 0.1, 0.8, 0.55]), tf.constant([10, 20]))
    np.testing.assert_array_equal(window, [2, 2, 5, 9])  # rows 2.5 -> 2, height 5.5 -> 5; cols 2, 9
    np.testing.assert_array_equal(geometric.patch_window(tf.constant(geometric.WHOLE_IMAGE_PATCH),
                                                         tf.constant([10, 20])), [0, 0, 10, 20])


_sample_patch = tf.function(geometric.sample_patch)


def test_sampled_patches_meet_their_drawn_minimum_iou_and_caffe_shape_limits():
    boxes = tf.constant([[0.1, 0.1, 0.4, 0.3], [0.5, 0.4, 0.95, 0.9], [0.3, 0.6, 0.5, 0.7]])
    drawn = set()
    for i in range(150):
        patch, min_iou = _sample_patch(boxes, _seed(i))
        patch, min_iou = patch.numpy(), float(min_iou)
        drawn.add(round(min_iou, 1))
        assert box_ops.iou(patch[None], boxes).numpy().max() >= min_iou
        height, width = patch[2] - patch[0], patch[3] - patch[1]
        assert 0.0 <= patch.min() and patch.max() <= 1.0 + 1e-6
        if not np.allclose(patch, geometric.WHOLE_IMAGE_PATCH):
            assert 0.3 - 1e-5 <= np.sqrt(height * width) <= 1.0 + 1e-5     # scale
            assert 0.5 - 1e-4 <= width / height <= 2.0 + 1e-4              # aspect
    assert {0.0, 0.1, 0.3, 0.5, 0.7}.issubset(drawn)


def test_without_boxes_the_sampler_keeps_the_whole_image():
    for i in range(10):
        patch, min_iou = _sample_patch(tf.zeros([0, 4]), _seed(i))
        np.testing.assert_array_equal(patch, geometric.WHOLE_IMAGE_PATCH)
        assert float(min_iou) == 0.0


def test_an_impossible_constraint_falls_back_to_the_whole_image():
    # A patch side is at least 0.3 of the image, so a 0.01-sized box never reaches IoU 0.9.
    patch, _ = geometric.sample_patch(tf.constant([[0.5, 0.5, 0.51, 0.51]]), _seed(0),
                                      CropConfig(min_ious=(0.9,)))
    np.testing.assert_array_equal(patch, geometric.WHOLE_IMAGE_PATCH)


def test_flip_mirrors_image_and_boxes():
    image = tf.reshape(tf.range(6, dtype=tf.float32), [1, 2, 3])
    boxes = tf.constant([[0.1, 0.2, 0.3, 0.5]])
    flipped_image, flipped_boxes = geometric.flip_left_right(image, boxes, tf.constant(True))
    np.testing.assert_array_equal(flipped_image[0], [[3, 4, 5], [0, 1, 2]])
    np.testing.assert_allclose(flipped_boxes, [[0.1, 0.5, 0.3, 0.8]])
    same_image, same_boxes = geometric.flip_left_right(image, boxes, tf.constant(False))
    np.testing.assert_array_equal(same_image, image)
    np.testing.assert_array_equal(same_boxes, boxes)


def test_an_inverted_box_has_iou_zero_so_it_never_satisfies_a_crop_constraint():
    # box_ops.iou clamps an inverted box's area to 0 and its intersection is 0: IoU 0 with any patch,
    # never negative or NaN. Only samplers with minimum IoU 0 (and the whole image) can then succeed.
    inverted = tf.constant([[0.6, 0.6, 0.2, 0.2]])
    np.testing.assert_array_equal(box_ops.iou(tf.constant([[0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.7, 0.7]]),
                                              inverted).numpy(), [[0.0], [0.0]])
    for i in range(10):
        patch, min_iou = _sample_patch(inverted, _seed(i))
        assert float(min_iou) == 0.0
