"""model/anchor_stats.py: best-anchor IoU and coverage (hand-checked), the grid form against brute
force over model.anchors.generate, and anchor fitting on tall, thin boxes."""

import json
import math

import numpy as np
import pytest

from model import anchor_stats, anchors, presets
from model.presets import FeatureMapSpec


def _one_map_config(size, step, min_size, max_size, ratios=(), image_size=100):
    base = presets.get("ssd300_vgg16", 2)
    return presets.SSDConfig(name="tiny", num_classes=2, image_size=image_size,
                             feature_maps=(FeatureMapSpec("m", size, step, min_size, max_size, ratios),),
                             extra_layers=base.extra_layers)


def test_best_iou_and_coverage_by_hand():
    anchor_boxes = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]])
    boxes = np.array([[0, 0, 0.5, 0.5],        # anchor 0 itself: IoU 1
                      [0, 0, 0.5, 0.25],       # half of anchor 0: 0.125 / 0.25 = 0.5
                      [0.25, 0.25, 0.75, 0.75],  # 0.0625 / (0.25 + 0.25 - 0.0625) = 1/7 with both
                      [0, 0, 0.1, 0.1]])       # inside anchor 0: 0.01 / 0.25 = 0.04
    best, index = anchor_stats.best_anchor_iou(boxes, anchor_boxes)
    np.testing.assert_allclose(best, [1.0, 0.5, 1 / 7, 0.04])
    np.testing.assert_array_equal(index, [0, 0, 0, 0])   # the 1/7 tie goes to the lower index
    report = anchor_stats.coverage_report(best, boxes, [1, 1, 2, 2], ("a", "b"), 100, 0.5)
    assert report["covered"] == 2 and report["coverage"] == 0.5 and report["forced_only"] == 2
    # sqrt(area) x 100 px: 50, 35.4, 50 -> "32-64"; 10 -> "<16".
    assert report["by_size"]["<16"] == {"boxes": 1, "covered": 0, "coverage": 0.0}
    assert report["by_size"]["32-64"] == {"boxes": 3, "covered": 2, "coverage": 2 / 3}
    assert report["by_size"][">=256"] == {"boxes": 0, "covered": 0, "coverage": None}
    assert report["by_class"] == {"a": {"boxes": 2, "covered": 2, "coverage": 1.0},
                                  "b": {"boxes": 2, "covered": 0, "coverage": 0.0}}
    assert report["best_iou_histogram"] == [1, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert report["mean_best_iou"] == pytest.approx((1 + 0.5 + 1 / 7 + 0.04) / 4)


def test_grid_form_by_hand():
    # A 2x2 grid of step 50 on a 100 px input: centres at 25 and 75; squares of 40 and sqrt(40*90)=60.
    config = _one_map_config(2, 50, 40, 90)
    boxes = np.array([[0, 0, 0.5, 0.5],          # 50x50 at (25, 25): 2500/3600 with the 60 square
                      [0.4, 0.4, 0.6, 0.6]])     # 20x20 at (50, 50), 25 px off every centre
    # Second box [40, 60] per axis: the 60 square at 25 spans [-5, 55], overlap 15 per axis ->
    # 225 / (400 + 3600 - 225); the 40 square spans [5, 45], overlap 5 -> 25 / 1975, less.
    np.testing.assert_allclose(anchor_stats.grid_best_iou(boxes, config), [2500 / 3600, 225 / 3775])
    np.testing.assert_allclose(anchor_stats.best_anchor_iou(boxes, anchors.generate(config))[0],
                               [2500 / 3600, 225 / 3775], rtol=1e-6)


def _random_boxes(n, seed):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (n, 2))
    sizes = np.exp(rng.uniform(np.log(0.005), np.log(1.0), (n, 2)))
    return np.clip(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1), 0, 1)


@pytest.mark.parametrize("name", ["ssd300_vgg16", "ssd512_vgg16"])
def test_grid_form_equals_brute_force(name):
    config = presets.get(name, 3)
    boxes = _random_boxes(200, seed=1)
    brute, _ = anchor_stats.best_anchor_iou(boxes, anchors.generate(config))
    np.testing.assert_allclose(anchor_stats.grid_best_iou(boxes, config), brute, atol=2e-6)


def test_boxes_under_the_uncoverable_side_are_never_covered():
    config = presets.get("ssd300_vgg16", 3)
    side = anchor_stats.uncoverable_side(config, 0.5)
    assert side == pytest.approx(30 * math.sqrt(0.5) / 300)
    boxes = _random_boxes(3000, seed=2)
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    best = anchor_stats.grid_best_iou(boxes, config)
    assert np.sum(sides < side) > 100
    assert np.all(best[sides < side] < 0.5)
    # Just above it, a box centred on an anchor of the first map is covered: not a loose bound.
    centre = (0.5 + 18) * 8 / 300
    half = 1.01 * side / 2
    assert anchor_stats.grid_best_iou(np.array([[centre - half, centre - half, centre + half,
                                                 centre + half]]), config)[0] >= 0.5


def tall_thin_boxes(n, seed=0):
    """Poles: height 30-60% of the image, 6-9 times taller than wide."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.3, 0.7, (n, 2))
    h = rng.uniform(0.3, 0.6, n)
    w = h / rng.uniform(6, 9, n)
    return np.stack([centres[:, 0] - h / 2, centres[:, 1] - w / 2, centres[:, 0] + h / 2,
                     centres[:, 1] + w / 2], axis=1)


def test_fit_raises_coverage_of_tall_thin_boxes_and_keeps_the_heads():
    boxes = tall_thin_boxes(2000)
    config = presets.get("ssd300_vgg16", 4)
    fitted, info = anchor_stats.fit_anchors(boxes, config, seed=0)
    before = np.mean(anchor_stats.grid_best_iou(boxes, config) >= 0.5)
    after = np.mean(anchor_stats.grid_best_iou(boxes, fitted) >= 0.5)
    # The preset's tallest anchor is 1:3; a 1:7 box of the same area has IoU 3/7 with it at best.
    assert before < 0.2, before
    assert after > 0.9 and after - before > 0.7, (before, after)
    assert info["coverage_before"] == pytest.approx(before) and info["coverage_after"] == pytest.approx(after)
    # Same maps, same boxes per cell, so the same anchors count and heads.
    for old, new in zip(config.feature_maps, fitted.feature_maps):
        assert (new.source, new.size, new.step, len(new.aspect_ratios)) == (
            old.source, old.size, old.step, len(old.aspect_ratios))
        assert new.min_size < new.max_size and all(r >= 1 for r in new.aspect_ratios)
        assert new.min_size == round(new.min_size)   # whole pixels, as Caffe reads them
    assert fitted.num_anchors == config.num_anchors == 8732
    mins = [fm.min_size for fm in fitted.feature_maps]
    assert mins == sorted(mins)
    assert max(r for fm in fitted.feature_maps for r in fm.aspect_ratios) > 5   # it found the poles
    again, _ = anchor_stats.fit_anchors(boxes, config, seed=0)
    assert again == fitted   # deterministic


def test_fit_never_returns_worse_anchors_and_rejects_no_boxes():
    # Boxes exactly on the preset's 60 px square anchors of fc7 (19x19, step 16): nothing to gain.
    config = presets.get("ssd300_vgg16", 1)
    c = (np.arange(3) + 5.5) * 16 / 300
    boxes = np.array([[y - 0.1, x - 0.1, y + 0.1, x + 0.1] for y in c for x in c])
    fitted, info = anchor_stats.fit_anchors(boxes, config)
    assert info["coverage_after"] >= info["coverage_before"] == 1.0
    with pytest.raises(ValueError, match="no boxes"):
        anchor_stats.fit_anchors(np.zeros((0, 4)), config)


def test_anchor_config_round_trips_through_presets_and_config_json():
    config = presets.get("ssd300_vgg16", 4, width_multiplier=0.125)
    fitted, _ = anchor_stats.fit_anchors(tall_thin_boxes(300), config)
    content = json.loads(json.dumps(anchor_stats.anchor_config_dict(fitted)))
    applied = presets.with_anchor_config(config, content)
    assert applied == fitted
    restored = presets.from_json(presets.to_json(applied))   # what model_dir/config.json keeps
    assert restored == fitted
    np.testing.assert_array_equal(anchors.generate(restored), anchors.generate(fitted))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["feature_maps"].pop(), "has 5 feature maps, preset ssd300_vgg16 has 6"),
    (lambda c: c["feature_maps"][1]["aspect_ratios"].append(4.0), "3 aspect ratios, preset ssd300_vgg16 has 2"),
    (lambda c: c["feature_maps"][0].update(size=37), "size 37"),
    (lambda c: c["feature_maps"][2].update(max_size=10), "min_size < max_size"),
    (lambda c: c["feature_maps"][2].update(aspect_ratios=[0.5, 2]), "aspect ratios >= 1"),
    (lambda c: c["feature_maps"][3].pop("min_size"), "min_size"),
    (lambda c: c.update(image_size=512), "512 px"),
])
def test_with_anchor_config_refuses_what_would_change_the_network(edit, message):
    config = presets.get("ssd300_vgg16", 4)
    content = anchor_stats.anchor_config_dict(config)
    edit(content)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        presets.with_anchor_config(config, content)


def test_unchanged_anchor_config_is_the_preset():
    config = presets.get("ssd512_vgg16", 20)
    assert presets.with_anchor_config(config, anchor_stats.anchor_config_dict(config)) == config
    assert math.isclose(anchor_stats.grid_best_iou(np.array([[0.0, 0.0, 1.0, 1.0]]), config)[0],
                        anchor_stats.best_anchor_iou(np.array([[0.0, 0.0, 1.0, 1.0]]),
                                                     anchors.generate(config))[0][0], rel_tol=1e-6)
