"""Tests for nets/backbone_loader.py on small random files written in each real layout.

The files are VGG16 at 1/8 width (conv channels 8..64, fc 512 -> reduced 128) so they stay small; the
name tables and conversions are the same as for the full-size files.
"""

import logging

import h5py
import numpy as np
import pytest
import tensorflow as tf

from model import presets
from nets import backbone_loader
from nets import ssd
from nets import vgg16

WIDTH = 0.125
NUM_VARIABLES = 30           # 13 convs + fc6 + fc7, kernel and bias each
FULL_FC = 512                # the file's fc1/fc2 width at 1/8 width: 4096 / 8
REDUCED_FC = 128             # the model's fc6/fc7 filters: 1024 / 8
CONV5_CHANNELS = 64          # 512 / 8


def _model(width=WIDTH):
    return ssd.build(presets.get("ssd300_vgg16", 20, width_multiplier=width))


def _conv_shapes(width=WIDTH):
    """[(block, index, kernel shape)] of the 13 VGG convs at `width`."""
    shapes, channels_in = [], 3
    for block, convs in enumerate(vgg16.VGG16_CONV_BLOCKS):
        for index, (_, filters) in enumerate(convs):
            filters = int(round(filters * width))
            shapes.append((block + 1, index + 1, (3, 3, channels_in, filters)))
            channels_in = filters
    return shapes


def _random(shape, rng):
    return rng.standard_normal(shape).astype(np.float32)


def _slim_variables(rng):
    variables = {}
    for block, index, shape in _conv_shapes():
        variables[f"vgg_16/conv{block}/conv{block}_{index}/weights"] = _random(shape, rng)
        variables[f"vgg_16/conv{block}/conv{block}_{index}/biases"] = _random(shape[-1:], rng)
    variables["vgg_16/fc6/weights"] = _random((3, 3, CONV5_CHANNELS, REDUCED_FC), rng)
    variables["vgg_16/fc6/biases"] = _random((REDUCED_FC,), rng)
    variables["vgg_16/fc7/weights"] = _random((1, 1, REDUCED_FC, REDUCED_FC), rng)
    variables["vgg_16/fc7/biases"] = _random((REDUCED_FC,), rng)
    return variables


def _write_checkpoint(prefix, variables):
    """A TF V2 checkpoint holding exactly these variable names (as TF-slim's Saver writes them)."""
    names = sorted(variables)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(variables[n]) for n in names])
    return str(prefix)


def _write_keras_h5(path, rng):
    """Keras-applications VGG16 layout: root `layer_names`, per layer `weight_names` (Keras 1 names)."""
    layers = [("input_1", [])]
    for block, index, shape in _conv_shapes():
        layers.append((f"block{block}_conv{index}", [shape, shape[-1:]]))
        if index == len(vgg16.VGG16_CONV_BLOCKS[block - 1]):
            layers.append((f"block{block}_pool", []))
    layers += [("flatten", []),
               ("fc1", [(7 * 7 * CONV5_CHANNELS, FULL_FC), (FULL_FC,)]),
               ("fc2", [(FULL_FC, FULL_FC), (FULL_FC,)]),
               ("predictions", [(FULL_FC, 10), (10,)])]
    values = {}
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = [name.encode() for name, _ in layers]
        for name, shapes in layers:
            group = h5.create_group(name)
            weight_names = [f"{name}_{letter}_1:0" for letter, _ in zip("Wb", shapes)]
            group.attrs["weight_names"] = np.array([w.encode() for w in weight_names], dtype="S")
            for weight_name, shape, kind in zip(weight_names, shapes, ("kernel", "bias")):
                values[f"{name}/{kind}"] = _random(shape, rng)
                group[weight_name] = values[f"{name}/{kind}"]
    return values


def _weights(model, layer):
    return [np.asarray(w) for w in model.get_layer(layer).get_weights()]


def test_slim_checkpoint_lands_in_named_layers_with_bgr_reversal(tmp_path, caplog):
    rng = np.random.default_rng(0)
    variables = _slim_variables(rng)
    prefix = _write_checkpoint(tmp_path / "vgg_16_reduced.ckpt", variables)
    model = _model()
    # On the absl logger itself: tf.saved_model.save (autotrackable) leaves absl's verbosity at WARNING,
    # so an earlier test that exports would otherwise hide this INFO line.
    with caplog.at_level(logging.INFO, logger="absl"):
        assert backbone_loader.load_backbone(model, prefix) == NUM_VARIABLES
    assert f"loaded {NUM_VARIABLES} of {NUM_VARIABLES} backbone variables from {prefix}" in caplog.text
    kernel, bias = _weights(model, "conv1_1")
    # BGR file -> RGB model: the file's input channel 2 (R) becomes the model's channel 0, and back.
    np.testing.assert_array_equal(kernel[:, :, 0, :], variables["vgg_16/conv1/conv1_1/weights"][:, :, 2, :])
    np.testing.assert_array_equal(kernel[:, :, 2, :], variables["vgg_16/conv1/conv1_1/weights"][:, :, 0, :])
    np.testing.assert_array_equal(bias, variables["vgg_16/conv1/conv1_1/biases"])
    for layer, scope in [("conv3_2", "conv3/conv3_2"), ("conv5_3", "conv5/conv5_3"), ("fc6", "fc6"), ("fc7", "fc7")]:
        kernel, bias = _weights(model, layer)
        np.testing.assert_array_equal(kernel, variables[f"vgg_16/{scope}/weights"], err_msg=layer)
        np.testing.assert_array_equal(bias, variables[f"vgg_16/{scope}/biases"], err_msg=layer)


def test_rgb_checkpoint_keeps_conv1_1_as_is_and_directory_is_resolved(tmp_path):
    variables = _slim_variables(np.random.default_rng(1))
    _write_checkpoint(tmp_path / "vgg_16_reduced.ckpt", variables)
    model = _model()
    assert backbone_loader.load_backbone(model, str(tmp_path), bgr_checkpoint=False) == NUM_VARIABLES
    np.testing.assert_array_equal(_weights(model, "conv1_1")[0], variables["vgg_16/conv1/conv1_1/weights"])


def test_keras_h5_fc_layers_are_subsampled_to_reduced_fc(tmp_path):
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    values = _write_keras_h5(path, np.random.default_rng(2))
    model = _model()
    assert backbone_loader.load_backbone(model, str(path)) == NUM_VARIABLES
    kernel, _ = _weights(model, "conv1_1")
    np.testing.assert_array_equal(kernel[:, :, ::-1, :], values["block1_conv1/kernel"])
    np.testing.assert_array_equal(_weights(model, "conv4_2")[0], values["block4_conv2/kernel"])
    np.testing.assert_array_equal(_weights(model, "conv4_2")[1], values["block4_conv2/bias"])
    fc6_kernel, fc6_bias = _weights(model, "fc6")
    fc7_kernel, fc7_bias = _weights(model, "fc7")
    assert fc6_kernel.shape == (3, 3, CONV5_CHANNELS, REDUCED_FC)
    # fc6 tap (1, 2), channel 5, filter 7 is fc1's window tap (3, 6), channel 5, filter 28: the
    # flattened [7, 7, 64] input row is (3 * 7 + 6) * 64 + 5 = 1733.
    assert fc6_kernel[1, 2, 5, 7] == values["fc1/kernel"][1733, 28]
    assert fc6_kernel[2, 0, 63, 127] == values["fc1/kernel"][(6 * 7 + 0) * 64 + 63, 508]
    assert fc6_bias[7] == values["fc1/bias"][28]
    # fc7 input 5, filter 7 is fc2's row 20, column 28.
    assert fc7_kernel[0, 0, 5, 7] == values["fc2/kernel"][20, 28]
    assert fc7_bias[7] == values["fc2/bias"][28]
    np.testing.assert_array_equal(fc7_kernel[0, 0], values["fc2/kernel"][::4, ::4])


def test_every_missing_or_misshaped_variable_is_named(tmp_path):
    variables = _slim_variables(np.random.default_rng(3))
    del variables["vgg_16/conv3/conv3_2/biases"]
    variables["vgg_16/fc7/weights"] = np.zeros((1, 1, REDUCED_FC, 7), np.float32)
    prefix = _write_checkpoint(tmp_path / "broken.ckpt", variables)
    model = _model()
    before = _weights(model, "conv1_1")[0]
    with pytest.raises(ValueError) as error:
        backbone_loader.load_backbone(model, prefix)
    message = str(error.value)
    assert f"2 of {NUM_VARIABLES} variables missing or mismatched" in message
    assert "vgg_16/conv3/conv3_2/biases: not in the file" in message
    assert "vgg_16/fc7/weights: file shape (1, 1, 128, 7)" in message
    np.testing.assert_array_equal(_weights(model, "conv1_1")[0], before)   # nothing half-loaded


def test_width_mismatch_lists_every_variable(tmp_path):
    prefix = _write_checkpoint(tmp_path / "narrow.ckpt", _slim_variables(np.random.default_rng(4)))
    with pytest.raises(ValueError, match=f"{NUM_VARIABLES} of {NUM_VARIABLES} variables"):
        backbone_loader.load_backbone(_model(width=2 * WIDTH), prefix)
