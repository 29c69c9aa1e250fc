"""Tests for nets/: the L2 normalization layer, the SSD graph's shapes and sizes, and the head order."""

import dataclasses
import keras
import numpy as np
import pytest

from dataset import fields
from model import anchors as anchors_lib
from model import presets
from nets import layers as ssd_layers
from nets import ssd

NUM_CLASSES = 20                 # VOC: 21 logits with background
TINY_WIDTH = 0.125               # conv channels / 8: behaviour tests stay fast on CPU


def _tiny(name, **overrides):
    return presets.get(name, NUM_CLASSES, width_multiplier=TINY_WIDTH, **overrides)


# --- L2Normalization ---------------------------------------------------------------------------

def test_l2_normalization_scales_unit_vector_by_20():
    layer = ssd_layers.L2Normalization()
    features = np.array([[[[3.0, 4.0]], [[0.0, 0.0]]]], dtype=np.float32)   # [1, 2, 1, 2]
    out = keras.ops.convert_to_numpy(layer(features))
    # (3, 4) has norm 5 -> (0.6, 0.8) * 20; an all-zero location stays zero instead of NaN.
    np.testing.assert_allclose(out[0, 0, 0], [12.0, 16.0], rtol=1e-6)
    np.testing.assert_array_equal(out[0, 1, 0], [0.0, 0.0])
    assert [w.name for w in layer.trainable_weights] == ["gamma"]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.gamma), [20.0, 20.0])


def test_l2_normalization_uses_per_channel_scale():
    layer = ssd_layers.L2Normalization()
    features = np.array([[[[3.0, 4.0]]]], dtype=np.float32)
    layer(features)
    layer.gamma.assign([1.0, 10.0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(features))[0, 0, 0], [0.6, 8.0], rtol=1e-6)


# --- graph shapes --------------------------------------------------------------------------------

def test_ssd300_parameter_count_matches_caffe_model():
    # DESIGN.md reference: 26,285,486 for 21 logits, including conv4_3_norm's 512 scales.
    assert ssd.build(presets.get("ssd300_vgg16", NUM_CLASSES)).count_params() == 26_285_486


def test_ssd512_parameter_count():
    # Derivation, 21 logits. A conv with kernel k x k, c inputs, f filters has k*k*c*f + f parameters.
    # VGG part (same as SSD300):
    #   13 VGG16 3x3 convs conv1_1..conv5_3                                  14,714,688
    #   fc6 3*3*512*1024 + 1024                                               4,719,616
    #   fc7 1*1*1024*1024 + 1024                                              1,049,600
    #   conv4_3_norm scales                                                         512
    #                                                                        20,484,416
    # Extra layers:
    #   conv6_1 1024*256+256 = 262,400   conv6_2 9*256*512+512 = 1,180,160
    #   conv7_1 512*128+128 = 65,664      conv7_2 9*128*256+256 = 295,168
    #   conv8_1, conv9_1, conv10_1 256*128+128 = 32,896 each
    #   conv8_2, conv9_2 9*128*256+256 = 295,168 each
    #   conv10_2 (4x4) 16*128*256+256 = 524,544                              3,016,960
    # Heads: a source of c channels with b boxes per location has conf + loc
    #   9*c*b*21 + 21*b + 9*c*b*4 + 4*b = 25*b*(9c + 1):
    #   conv4_3_norm (512, 4) 460,900   fc7 (1024, 6) 1,382,550   conv6_2 (512, 6) 691,350
    #   conv7_2 (256, 6) 345,750        conv8_2 (256, 6) 345,750  conv9_2, conv10_2 (256, 4) 230,500 each
    #                                                                         3,687,300
    # Total 20,484,416 + 3,016,960 + 3,687,300                               27,188,676
    assert ssd.build(presets.get("ssd512_vgg16", NUM_CLASSES)).count_params() == 27_188_676


@pytest.mark.parametrize("name, sizes, num_anchors", [
    ("ssd300_vgg16", {"pool3": 38, "conv4_3_norm": 38, "fc7": 19, "conv6_2": 10, "conv7_2": 5,
                      "conv8_2": 3, "conv9_2": 1}, 8732),
    ("ssd512_vgg16", {"pool3": 64, "conv4_3_norm": 64, "fc7": 32, "conv6_2": 16, "conv7_2": 8,
                      "conv8_2": 4, "conv9_2": 2, "conv10_2": 1}, 24564),
])
def test_feature_map_and_output_shapes(name, sizes, num_anchors):
    model = ssd.build(_tiny(name))
    for layer_name, size in sizes.items():
        assert tuple(model.get_layer(layer_name).output.shape[1:3]) == (size, size), layer_name
    assert tuple(model.output[fields.CLS_LOGITS].shape) == (None, num_anchors, NUM_CLASSES + 1)
    assert tuple(model.output[fields.BOX_CODES].shape) == (None, num_anchors, 4)


def test_width_multiplier_scales_convs_but_not_head_outputs():
    model = ssd.build(_tiny("ssd300_vgg16"))
    assert model.get_layer("conv1_1").filters == 8           # 64 / 8
    assert model.get_layer("fc7").filters == 128             # 1024 / 8
    assert model.get_layer("conv6_2").filters == 64          # 512 / 8
    assert model.get_layer("fc7_mbox_conf").filters == 6 * (NUM_CLASSES + 1)
    assert model.get_layer("conv4_3_norm_mbox_loc").filters == 4 * 4


def test_mismatched_image_size_is_reported_per_source():
    with pytest.raises(ValueError, match=r"conv4_3_norm: network gives 40x40, config expects 38x38"):
        ssd.build(_tiny("ssd300_vgg16", image_size=320))


def test_forward_outputs_float32_under_mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = ssd.build(_tiny("ssd300_vgg16"))
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("conv1_1").compute_dtype == "bfloat16"
    outputs = model(np.zeros((1, 300, 300, 3), np.float32), training=False)
    assert outputs[fields.CLS_LOGITS].dtype == "float32"
    assert outputs[fields.BOX_CODES].dtype == "float32"
    assert tuple(outputs[fields.CLS_LOGITS].shape) == (1, 8732, NUM_CLASSES + 1)


# --- head order == anchor order ------------------------------------------------------------------

def _probe_heads(config):
    """Heads of `config` on probe inputs whose loc outputs spell out (row, col, box spec, feature map).

    Each source is replaced by an input [1, size, size, 3] holding (row, col, 1) at every location.
    Every loc head gets a kernel reading row/col at the centre tap and a bias holding the box-spec
    index j and the feature-map index m, so loc output group j at (row, col) is (row, col, j, m).
    Returns box_codes [A, 4].
    """
    inputs = {spec.source: keras.Input((spec.size, spec.size, 3), name=spec.source) for spec in config.feature_maps}
    _, box_codes = ssd.multibox_heads(inputs, config)
    probe = keras.Model(inputs, box_codes)
    feeds = {}
    for m, spec in enumerate(config.feature_maps):
        rows, cols = np.meshgrid(np.arange(spec.size), np.arange(spec.size), indexing="ij")
        feeds[spec.source] = np.stack([rows, cols, np.ones_like(rows)], axis=-1)[None].astype(np.float32)
        kernel = np.zeros((3, 3, 3, spec.boxes_per_location * 4), np.float32)
        bias = np.zeros(spec.boxes_per_location * 4, np.float32)
        for j in range(spec.boxes_per_location):
            kernel[1, 1, 0, 4 * j + 0] = 1.0     # row
            kernel[1, 1, 1, 4 * j + 1] = 1.0     # col
            bias[4 * j + 2] = j
            bias[4 * j + 3] = m
        probe.get_layer(spec.source + ssd.LOC_SUFFIX).set_weights([kernel, bias])
    return keras.ops.convert_to_numpy(probe(feeds))[0]


@pytest.mark.parametrize("name", presets.NAMES)
def test_head_output_k_predicts_anchor_k(name):
    config = _tiny(name)
    labels = np.rint(_probe_heads(config)).astype(int)        # [A, 4] (row, col, box spec, map)
    # Unclipped anchors: clipping (the MLPerf preset) moves centres, not the order this test checks.
    anchors = anchors_lib.generate(dataclasses.replace(config, anchor_clip="none"))  # [A, 4] yxyx normalized
    assert labels.shape == anchors.shape
    specs = [config.feature_maps[m] for m in labels[:, 3]]
    steps = np.array([s.step for s in specs])
    # Anchor k's centre must be the centre of cell (row, col) of map m ...
    centre_y = (anchors[:, 0] + anchors[:, 2]) / 2 * config.image_size
    centre_x = (anchors[:, 1] + anchors[:, 3]) / 2 * config.image_size
    np.testing.assert_allclose(centre_y, (labels[:, 0] + 0.5) * steps, atol=1e-3)
    np.testing.assert_allclose(centre_x, (labels[:, 1] + 0.5) * steps, atol=1e-3)
    # ... and its shape box spec j's: min square, sqrt(min*max) square, then (r, 1/r) pairs.
    height = (anchors[:, 2] - anchors[:, 0]) * config.image_size
    width = (anchors[:, 3] - anchors[:, 1]) * config.image_size
    expected = []
    for spec, j in zip(specs, labels[:, 2]):
        # Caffe's PriorBox reads the sizes as int (config.integer_prior_sizes, the VGG presets).
        min_size, max_size = ((int(spec.min_size), int(spec.max_size)) if config.integer_prior_sizes
                              else (spec.min_size, spec.max_size))
        if j < 2:
            side = min_size if j == 0 else np.sqrt(min_size * max_size)
            expected.append((side, side))
        else:
            root = np.sqrt(spec.aspect_ratios[(j - 2) // 2]) ** (1 if j % 2 == 0 else -1)
            expected.append((min_size / root, min_size * root))
    np.testing.assert_allclose(np.stack([height, width], axis=-1), expected, rtol=1e-4)
    # Every (map, row, col, box) appears once: the probe really distinguishes all positions.
    assert len({tuple(label) for label in labels}) == config.num_anchors


# --- normalization inside the model -------------------------------------------------------------

def test_pixel_normalization_subtracts_the_mean_and_divides_by_std_in_float32():
    pixels = np.array([[[[0, 128, 255]]]], np.uint8)                       # [1, 1, 1, 3]
    mean_only = ssd.PixelNormalization((123.68, 116.78, 103.94))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(mean_only(pixels)),
                               [[[[-123.68, 11.22, 151.06]]]], rtol=1e-6)
    with_std = ssd.PixelNormalization((100.0, 100.0, 100.0), std=(50.0, 4.0, 1.0), dtype="mixed_bfloat16")
    out = with_std(pixels)
    assert out.dtype == "float32"                                           # its own policy, not bf16
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), [[[[-2.0, 7.0, 155.0]]]], rtol=1e-6)


def test_model_takes_uint8_or_float_pixels_alike_and_normalizes_first():
    config = _tiny("ssd300_vgg16")
    model = ssd.build(config)
    assert model.layers[1].name == ssd.NORMALIZATION_LAYER    # right after the input
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 300, 300, 3)).astype(np.uint8)
    from_uint8 = model(pixels)
    from_float = model(pixels.astype(np.float32))
    for key in (fields.CLS_LOGITS, fields.BOX_CODES):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(from_uint8[key]),
                                      keras.ops.convert_to_numpy(from_float[key]))
    # A mean-coloured image is all zeros after the first layer.
    grey = np.broadcast_to(np.array(config.pixel_mean, np.float32), (1, 300, 300, 3))
    normalized = keras.Model(model.input, model.get_layer(ssd.NORMALIZATION_LAYER).output)(grey)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(normalized), 0.0, atol=1e-5)


@pytest.mark.parametrize("preset", ["ssd300_vgg16", "ssd300_resnet34"])
def test_same_seed_same_weights_and_no_two_kernels_alike(preset):
    # Initializers are made per layer at build time: an instance shared at module level took its seed at
    # import (before keras.utils.set_random_seed) and gave every ResNet34 conv of one shape the same
    # kernel (21 of its 51 before the fix).
    config = presets.get(preset, 3, width_multiplier=0.125)
    keras.utils.set_random_seed(5)
    first = ssd.build(config).get_weights()
    keras.utils.set_random_seed(5)
    second = ssd.build(config).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    kernels = [w for w in first if w.ndim == 4]
    assert not any(np.array_equal(a, b) for i, a in enumerate(kernels) for b in kernels[i + 1:]
                   if a.shape == b.shape)
