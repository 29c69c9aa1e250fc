import numpy as np

from dataset.voc_boxes import normalized_to_voc_pixels, voc_pixels_to_normalized


def test_whole_image_is_unit_box():
    # A 500x375 VOC image: the box (1, 1, 500, 375) covers every pixel.
    np.testing.assert_allclose(voc_pixels_to_normalized([[1, 1, 500, 375]], 500, 375), [[0, 0, 1, 1]])


def test_hand_computed_box():
    # xmin 51 -> (51-1)/500 = 0.1; ymin 76 -> 75/375 = 0.2; xmax 250 -> 0.5; ymax 300 -> 0.8.
    np.testing.assert_allclose(voc_pixels_to_normalized([[51, 76, 250, 300]], 500, 375),
                               [[0.2, 0.1, 0.8, 0.5]], rtol=1e-6)


def test_round_trip_random_boxes():
    rng = np.random.default_rng(0)
    w, h = 353, 500
    x = np.sort(rng.integers(1, w + 1, size=(50, 2)), axis=1)
    y = np.sort(rng.integers(1, h + 1, size=(50, 2)), axis=1)
    px = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    back = normalized_to_voc_pixels(voc_pixels_to_normalized(px, w, h), w, h)
    np.testing.assert_allclose(back, px, atol=1e-3)
