import dataclasses
import math

import numpy as np
import pytest

from model import anchors, presets


@pytest.fixture(scope="module")
def ssd300_anchors():
    return anchors.generate(presets.get("ssd300_vgg16", 20))


def _box(cy, cx, h, w):
    return [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]


def test_anchor_counts_match_the_paper():
    a300 = anchors.generate(presets.get("ssd300_vgg16", 20))
    a512 = anchors.generate(presets.get("ssd512_vgg16", 20))
    assert a300.shape == (8732, 4) and a300.dtype == np.float32
    assert a512.shape == (24564, 4) and a512.dtype == np.float32


# First anchors of each SSD300 map. Offsets: 38*38*4 = 5776; +19*19*6 = 7942; +10*10*6 = 8542;
# +5*5*6 = 8692; +3*3*4 = 8728.  Cell (0, 0) centre = 0.5 * step / 300.
# Each row: (first index, centre px, min, max, first non-square ratio r).
SSD300_FIRST_BOXES = [
    (0, 0.5 * 8, 30, 60, 2),        # centre 4 px; squares 30 and sqrt(30*60)=42.43; r=2: w 42.43, h 21.21
    (5776, 0.5 * 16, 60, 111, 2),   # centre 8 px; squares 60 and sqrt(60*111)=81.61
    (7942, 0.5 * 32, 111, 162, 2),  # centre 16 px; squares 111 and sqrt(111*162)=134.10
    (8542, 0.5 * 64, 162, 213, 2),  # centre 32 px; squares 162 and sqrt(162*213)=185.76
    (8692, 0.5 * 100, 213, 264, 2),  # centre 50 px; squares 213 and sqrt(213*264)=237.13
    (8728, 0.5 * 300, 264, 315, 2),  # centre 150 px; squares 264 and sqrt(264*315)=288.37
]


@pytest.mark.parametrize("first, centre_px, min_px, max_px, ratio", SSD300_FIRST_BOXES)
def test_first_boxes_of_each_feature_map(ssd300_anchors, first, centre_px, min_px, max_px, ratio):
    c = centre_px / 300
    s = min_px / 300
    s_between = math.sqrt(min_px * max_px) / 300
    expected = [
        _box(c, c, s, s),                                             # min-size square
        _box(c, c, s_between, s_between),                             # sqrt(min*max) square
        _box(c, c, s / math.sqrt(ratio), s * math.sqrt(ratio)),       # ratio 2: wide
        _box(c, c, s * math.sqrt(ratio), s / math.sqrt(ratio)),       # ratio 1/2: tall
    ]
    np.testing.assert_allclose(ssd300_anchors[first:first + 4], expected, atol=1e-6)


def test_first_conv4_3_boxes_literal_numbers(ssd300_anchors):
    # centre 4/300 = 0.013333; half side 15/300 = 0.05 -> [-0.036667, 0.063333].
    np.testing.assert_allclose(ssd300_anchors[0], [-0.036667, -0.036667, 0.063333, 0.063333], atol=1e-6)
    # ratio 2: h = 30/sqrt(2) = 21.2132 px (half 0.035355), w = 30*sqrt(2) = 42.4264 px (half 0.070711).
    np.testing.assert_allclose(ssd300_anchors[2], [0.013333 - 0.035355, 0.013333 - 0.070711,
                                                   0.013333 + 0.035355, 0.013333 + 0.070711], atol=1e-5)


def test_ratio_three_pair_on_fc7(ssd300_anchors):
    # fc7 has ratios (2, 3): boxes 4 and 5 of a location are r = 3 (w = 60*sqrt3 = 103.92 px,
    # h = 60/sqrt3 = 34.64 px) and r = 1/3 (the transpose).
    wide, tall = ssd300_anchors[5776 + 4], ssd300_anchors[5776 + 5]
    h, w = (wide[2] - wide[0]) * 300, (wide[3] - wide[1]) * 300
    assert h == pytest.approx(60 / math.sqrt(3), rel=1e-5)
    assert w == pytest.approx(60 * math.sqrt(3), rel=1e-5)
    assert w / h == pytest.approx(3.0, rel=1e-5)
    assert (tall[2] - tall[0]) * 300 == pytest.approx(w, rel=1e-5)
    assert (tall[3] - tall[1]) * 300 == pytest.approx(h, rel=1e-5)


def test_order_is_row_then_column_then_box(ssd300_anchors):
    # conv4_3: 4 boxes per location. Index 4 is cell (row 0, col 1): same y, x moved by one step (8 px).
    # Index 38*4 is cell (row 1, col 0): y moved by one step, same x.
    step = 8 / 300
    np.testing.assert_allclose(ssd300_anchors[4] - ssd300_anchors[0], [0, step, 0, step], atol=1e-6)
    np.testing.assert_allclose(ssd300_anchors[38 * 4] - ssd300_anchors[0], [step, 0, step, 0], atol=1e-6)


def test_anchors_are_not_clipped(ssd300_anchors):
    assert ssd300_anchors.min() < 0 and ssd300_anchors.max() > 1


def test_ssd512_sizes_truncated_to_int_as_caffe_prior_box():
    # Caffe PriorBoxLayer: `int min_size_ = min_sizes_[s]`, so 35.84 -> 35 and 76.8 -> 76 (conv4_3).
    config = presets.get("ssd512_vgg16", 20)
    assert config.integer_prior_sizes
    a512 = anchors.generate(config)
    c = 4 / 512                                                       # cell (0, 0) centre, step 8
    np.testing.assert_allclose(a512[0], _box(c, c, 35 / 512, 35 / 512), atol=1e-7)
    between = math.sqrt(35 * 76) / 512                                # 51.58 px, not sqrt(35.84 * 76.8)
    np.testing.assert_allclose(a512[1], _box(c, c, between, between), atol=1e-7)
    np.testing.assert_allclose(a512[2], _box(c, c, 35 / math.sqrt(2) / 512, 35 * math.sqrt(2) / 512), atol=1e-7)
    # fc7 (first index 64*64*4 = 16384): min 76.8 -> 76, max 153.6 -> 153, centre 8 px.
    np.testing.assert_allclose(a512[16384 + 1], _box(8 / 512, 8 / 512, math.sqrt(76 * 153) / 512,
                                                     math.sqrt(76 * 153) / 512), atol=1e-7)
    # Unfloored (integer_prior_sizes=False, e.g. a non-Caffe preset): the given 35.84 px.
    exact = anchors.generate(presets.get("ssd512_vgg16", 20, integer_prior_sizes=False))
    np.testing.assert_allclose(exact[0], _box(c, c, 35.84 / 512, 35.84 / 512), atol=1e-7)
    # Corners move by up to 0.69 px: fc7's ratio-3 box, min 76.8 vs 76: (0.8 * sqrt(3)) / 2.
    assert np.abs(exact - a512).max() * 512 == pytest.approx(0.8 * math.sqrt(3) / 2, abs=1e-3)


def test_ssd300_unaffected_by_integer_sizes(ssd300_anchors):
    exact = anchors.generate(presets.get("ssd300_vgg16", 20, integer_prior_sizes=False))
    np.testing.assert_array_equal(exact, ssd300_anchors)


def test_anchor_clip_modes_on_the_10x10_map_by_hand():
    """SSD300's 10x10 map (step 32): its last centre is 9.5 * 32 = 304 px. "size" (torchvision) keeps that
    centre and clamps only width/height; "center_size" (MLPerf) clamps the centre to 300 px too."""
    base = presets.get("ssd300_vgg16_coco", 80)
    first = sum(fm.size * fm.size * fm.boxes_per_location for fm in base.feature_maps[:2])
    last_cell = first + (10 * 10 - 1) * 6          # row 9, column 9, the min_size square (99 px)
    boxes = {mode: anchors.generate(dataclasses.replace(base, anchor_clip=mode))[last_cell]
             for mode in anchors.ANCHOR_CLIPS}
    np.testing.assert_allclose(boxes["none"] * 300, [254.5, 254.5, 353.5, 353.5], atol=1e-4)
    np.testing.assert_allclose(boxes["size"] * 300, [254.5, 254.5, 353.5, 353.5], atol=1e-4)
    np.testing.assert_allclose(boxes["center_size"] * 300, [250.5, 250.5, 349.5, 349.5], atol=1e-4)
    # The 1x1 map's ratio-2 box (261 * sqrt 2 = 369 px wide): "size" clamps the width to 300.
    wide = -2     # the last map's boxes: min square, sqrt square, wide (r = 2), tall (1/2)
    for mode in ("size", "center_size"):
        y0, x0, y1, x1 = anchors.generate(dataclasses.replace(base, anchor_clip=mode))[wide] * 300
        np.testing.assert_allclose([x0, x1, y1 - y0], [0.0, 300.0, 261 / np.sqrt(2)], atol=1e-3)
    with pytest.raises(ValueError, match="unknown anchor_clip 'both'"):
        anchors.generate(dataclasses.replace(base, anchor_clip="both"))


def test_old_model_dir_config_with_clip_anchors_still_loads():
    config = presets.get("ssd300_resnet34", 80)
    text = presets.to_json(config).replace('"anchor_clip": "center_size"', '"clip_anchors": true')
    assert "clip_anchors" in text and presets.from_json(text) == config
