"""The COCO presets: Caffe ssd_coco.py's anchor sizes, computed here by hand from its ratios."""

import numpy as np
import pytest

from model import anchors, presets


def _caffe_sizes(image_size, min_ratio, max_ratio, num_layers, first_ratio):
    """ssd_coco.py: step = int((max_ratio - min_ratio) / (num_layers - 2)); the first layer gets
    first_ratio% (min) and min_ratio% (max); then min_ratio, min_ratio + step, ... of the input."""
    step = int((max_ratio - min_ratio) / (num_layers - 2))
    mins, maxs = [image_size * first_ratio / 100.0], [image_size * min_ratio / 100.0]
    for ratio in range(min_ratio, max_ratio + 1, step):
        mins.append(image_size * ratio / 100.0)
        maxs.append(image_size * (ratio + step) / 100.0)
    return mins, maxs


@pytest.mark.parametrize("name, image_size, min_ratio, first_ratio, num_layers, expected_min, expected_max", [
    ("ssd300_vgg16_coco", 300, 15, 7, 6, [21, 45, 99, 153, 207, 261], [45, 99, 153, 207, 261, 315]),
    ("ssd512_vgg16_coco", 512, 10, 4, 7, [20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8],
     [51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72]),
])
def test_anchor_sizes_are_ssd_coco_py(name, image_size, min_ratio, first_ratio, num_layers, expected_min,
                                      expected_max):
    config = presets.get(name, 80)
    mins, maxs = _caffe_sizes(image_size, min_ratio, 90, num_layers, first_ratio)
    np.testing.assert_allclose(mins, expected_min)   # the hand computation is DESIGN.md's table
    np.testing.assert_allclose(maxs, expected_max)
    np.testing.assert_allclose([fm.min_size for fm in config.feature_maps], expected_min)
    np.testing.assert_allclose([fm.max_size for fm in config.feature_maps], expected_max)
    voc = presets.get(name[:-len("_coco")], 80)
    # Everything else is the VOC net's: grids, steps, ratios, extra layers, so 8732 / 24564 anchors.
    assert [(f.source, f.size, f.step, f.aspect_ratios) for f in config.feature_maps] == [
        (f.source, f.size, f.step, f.aspect_ratios) for f in voc.feature_maps]
    assert config.extra_layers == voc.extra_layers and config.image_size == image_size
    assert config.num_anchors == {300: 8732, 512: 24564}[image_size]


def test_first_anchor_of_ssd300_coco():
    # Cell (0, 0) of the 38 x 38 map: centre 0.5 * 8 / 300; the first square has side 21 / 300, the
    # second sqrt(21 * 45) / 300.
    boxes = anchors.generate(presets.get("ssd300_vgg16_coco", 80))
    centre = 4.0 / 300
    np.testing.assert_allclose(boxes[0], [centre - 10.5 / 300, centre - 10.5 / 300,
                                          centre + 10.5 / 300, centre + 10.5 / 300], atol=1e-6)
    half = np.sqrt(21 * 45) / 2 / 300
    np.testing.assert_allclose(boxes[1], [centre - half, centre - half, centre + half, centre + half], atol=1e-6)
    assert "ssd300_vgg16_coco" in presets.NAMES and "ssd512_vgg16_coco" in presets.NAMES
