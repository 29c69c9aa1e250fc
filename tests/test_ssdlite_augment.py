"""preprocessing/ssdlite_augment.py: torchvision's RandomIoUCrop + flip (references/detection/transforms.py)."""

import numpy as np
import tensorflow as tf

from engine import train_config
from preprocessing import augment as augment_lib
from preprocessing import ssdlite_augment

HEIGHT, WIDTH = 60, 80


def _coordinate_image():
    """Pixel (y, x) holds (y, x, 7): any crop, flip or colour change shows in the values."""
    rows, cols = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)


def test_registered_under_its_name():
    assert augment_lib.POLICIES["ssdlite"] is ssdlite_augment.augment
    assert "ssdlite" in train_config.AUGMENTATIONS


def test_crops_follow_random_iou_crop_s_rules():
    image = _coordinate_image()
    boxes = np.array([[0.1, 0.1, 0.5, 0.4], [0.4, 0.5, 0.9, 0.95], [0.0, 0.0, 1.0, 1.0]], np.float32)
    labels = np.array([1, 2, 3], np.int32)
    crops = 0
    for seed in range(40):
        out, out_boxes, out_labels = [np.asarray(t) for t in ssdlite_augment.augment(image, boxes, labels, [seed, 1])]
        height, width = out.shape[:2]
        assert np.all(out[..., 2] == 7)                             # no photometric change
        flipped = width > 1 and out[0, 0, 1] > out[0, -1, 1]
        top, left = int(out[0, 0, 0]), int(out[0, -1 if flipped else 0, 1])
        # The output is exactly image[top:top + h, left:left + w] (mirrored when flipped).
        expected = image[top:top + height, left:left + width]
        np.testing.assert_array_equal(out, expected[:, ::-1] if flipped else expected)
        if (height, width) == (HEIGHT, WIDTH):
            np.testing.assert_allclose(out_boxes, boxes[:, [0, 3, 2, 1]] * [1, -1, 1, -1] + [0, 1, 0, 1]
                                       if flipped else boxes, atol=1e-6)
            continue
        crops += 1
        # int(W * U(0.3, 1)) per side, aspect new_w / new_h in [0.5, 2].
        assert int(0.3 * HEIGHT) <= height <= HEIGHT and int(0.3 * WIDTH) <= width <= WIDTH
        assert 0.5 <= width / height <= 2.0
        # Kept: exactly the boxes whose centre lies strictly inside the crop, clamped to it.
        centre_y = (boxes[:, 0] + boxes[:, 2]) / 2 * HEIGHT
        centre_x = (boxes[:, 1] + boxes[:, 3]) / 2 * WIDTH
        inside = (left < centre_x) & (centre_x < left + width) & (top < centre_y) & (centre_y < top + height)
        np.testing.assert_array_equal(out_labels, labels[inside])
        pixels = boxes[inside] * [HEIGHT, WIDTH, HEIGHT, WIDTH] - [top, left, top, left]
        expected_boxes = np.clip(pixels, 0, [height, width, height, width]) / [height, width, height, width]
        if flipped:
            expected_boxes = np.stack([expected_boxes[:, 0], 1 - expected_boxes[:, 3], expected_boxes[:, 2],
                                       1 - expected_boxes[:, 1]], axis=1)
        np.testing.assert_allclose(out_boxes, expected_boxes, atol=1e-5)
    assert crops > 20           # 1 in 7 rounds keeps the image; most seeds crop


def test_image_without_boxes_is_kept_whole_and_output_size_resizes():
    image = _coordinate_image()
    out, boxes, labels = ssdlite_augment.augment(image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32),
                                                 [3, 4], output_size=(30, 40))
    assert out.shape == (30, 40, 3) and out.dtype == tf.float32
    assert boxes.shape == (0, 4) and labels.shape == (0,)
    # Bilinear, half-pixel centres: output pixel (0, 0) samples input (0.5, 0.5): mean of rows 0 and 1.
    assert abs(float(out[0, 0, 0]) - 0.5) < 1e-5


def test_same_seed_same_result_and_extras_follow_labels():
    image = _coordinate_image()
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9]], np.float32)
    labels = np.array([4, 5], np.int32)
    first = ssdlite_augment.augment(image, boxes, labels, [9, 9], extras={"crowd": np.array([True, False])})
    second = ssdlite_augment.augment(image, boxes, labels, [9, 9], extras={"crowd": np.array([True, False])})
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[3]["crowd"], np.asarray(first[2]) == 4)
