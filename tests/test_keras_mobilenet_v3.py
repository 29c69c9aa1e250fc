"""Keras's MobileNetV3Large ImageNet backbone in the SSDLite preset (nets/keras_mobilenet_v3.py).

Reference: keras.applications.MobileNetV3Large itself (keras/src/applications/mobilenet_v3.py), built
here with weights=None and seeded weights, its batch-norm statistics set from a seeded image and then
perturbed (so every BN normalises, as in a trained network, and a swapped or missing statistic shows).
Our backbone, built with backbone_padding="keras" and loaded from a file of those weights, must give
Keras's own C4 and C5 activations; built with torchvision's padding it must not.
"""

import json

import keras
import numpy as np
import pytest

from engine import training
from model import presets
from nets import backbone_loader, keras_mobilenet_v3, mobilenet_v3, ssd
from tests.reference import seeded_weights

NAME = "ssdlite320_mobilenet_v3_large"
SIZE = 320
SEED = 3
C4_LAYER, C5_LAYER = "features_13_expand_act", "features_16_conv_act"
KERAS_WEIGHTS = 262      # 15 + 2 convs: each conv kernel and BN's 4 vectors; SE fc1 and fc2 kernel + bias


def _calibrate(network, images, rng):
    """Sets every BN's moving statistics to its batch statistics on `images`, then perturbs them."""
    batch_norms = [layer for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in batch_norms:
        layer.momentum = 0.0            # the next training-mode call writes the batch statistics
    network(images, training=True)
    for layer in batch_norms:
        layer.momentum = 0.999
        channels = layer.gamma.shape
        layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
        layer.beta.assign(rng.normal(0.0, 0.2, channels).astype(np.float32))
        std = np.sqrt(layer.moving_variance.numpy())
        layer.moving_mean.assign(layer.moving_mean.numpy() + 0.1 * std * rng.normal(size=channels).astype(np.float32))
        layer.moving_variance.assign(layer.moving_variance.numpy() * rng.uniform(0.7, 1.4, channels).astype(np.float32))


@pytest.fixture(scope="module")
def images():
    return seeded_weights.seeded_images(2, SIZE, SEED).astype(np.float32)   # [calibration, test]


@pytest.fixture(scope="module")
def network(images):
    """Keras's MobileNetV3Large(include_top=False) at 320 px, seeded weights, every BN statistic set."""
    keras.utils.set_random_seed(SEED)
    net = keras.applications.MobileNetV3Large(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(SEED)
    for layer in net.layers:
        if layer.name.endswith("squeeze_excite_conv") or layer.name.endswith("squeeze_excite_conv_1"):
            layer.bias.assign(rng.normal(0.0, 0.2, layer.bias.shape).astype(np.float32))
    _calibrate(net, images[:1], rng)
    return net


@pytest.fixture(scope="module")
def keras_taps(network, images):
    taps = keras.Model(network.input, [network.get_layer(keras_mobilenet_v3.KERAS_C4_INPUT_OF).input, network.output])
    return [np.asarray(t) for t in taps(images[1:])]


@pytest.fixture(scope="module")
def legacy_h5(network, tmp_path_factory):
    """The weights as a legacy HDF5 file: the format of Keras's ImageNet download (..._no_top_v2.h5)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    path = str(tmp_path_factory.mktemp("keras") / keras_mobilenet_v3.WEIGHTS_FILE)
    with h5py.File(path, "w") as h5:
        legacy_h5_format.save_weights_to_hdf5_group(h5, network)
    return path


def _taps(model, images):
    taps = keras.Model(model.input, [model.get_layer(C4_LAYER).output, model.get_layer(C5_LAYER).output])
    return [np.asarray(t) for t in taps(images)]


def test_keras_padding_is_correct_pad_and_same():
    # 'same' / correct_pad with stride 2: the odd pixel after on an even size, symmetric on an odd one.
    assert mobilenet_v3.keras_padding(320, 3, 2) == (0, 1)
    assert mobilenet_v3.keras_padding(80, 5, 2) == (1, 2)
    assert mobilenet_v3.keras_padding(7, 3, 2) == (1, 1)
    assert mobilenet_v3.keras_padding(9, 5, 2) == (2, 2)
    assert mobilenet_v3.keras_padding(20, 5, 1) == (2, 2)


def test_config_json_keeps_the_padding_and_old_files_read_as_torch():
    config = presets.get(NAME, 3, reduced_tail=False, backbone_padding=presets.KERAS_PADDING)
    assert presets.from_json(presets.to_json(config)) == config
    old = json.loads(presets.to_json(presets.get(NAME, 3)))
    del old["backbone_padding"]                   # a model_dir written before the field existed
    assert presets.from_json(json.dumps(old)).backbone_padding == presets.TORCH_PADDING


def test_train_route_builds_keras_padding_and_gives_keras_s_c4_c5(network, keras_taps, legacy_h5, images):
    """train_ssd.py's route: the overrides for a Keras .h5, the model built with them, init_backbone ->
    nets/backbone_loader -> load_file; then C4 (20x20x672) and C5 (10x10x960) equal Keras's own."""
    overrides = backbone_loader.mobilenet_v3_overrides(legacy_h5)
    assert overrides == {"reduced_tail": False, "backbone_padding": presets.KERAS_PADDING}
    assert backbone_loader.mobilenet_v3_overrides(presets.KERAS_IMAGENET) == overrides
    model = ssd.build(presets.get(NAME, 3, **overrides))
    # Every stride-2 pad equals the one Keras computed itself (correct_pad; the stem's 'same' is (0, 1)).
    for index, setting in enumerate(mobilenet_v3.block_settings(1.0, False), start=1):
        if setting[-1] == 2:
            prefix = keras_mobilenet_v3.keras_block_prefix(index)
            assert (model.get_layer(f"features_{index}_dw_pad").padding
                    == tuple(map(tuple, network.get_layer(prefix + "depthwise_pad").padding)))
    assert model.get_layer(f"{mobilenet_v3.FIRST_LAYER}_pad").padding == ((0, 1), (0, 1))

    assert training.init_backbone(model, legacy_h5, True, "sgd") == KERAS_WEIGHTS == len(network.weights)
    c4, c5 = _taps(model, images[1:])
    assert c4.shape == (1, 20, 20, 672) and c5.shape == (1, 10, 10, 960)
    for ours, theirs in ((c4, keras_taps[0]), (c5, keras_taps[1])):
        # Float rounding only (Keras's x / 127.5 - 1 against our (x - 127.5) / 127.5, 'same' against
        # explicit padding), grown through 15 blocks: within 1e-5 of the activations' range.
        scale = np.abs(theirs).max()
        print("max |difference| / max |activation|", np.abs(ours - theirs).max() / scale, "scale", scale,
              "mean |activation|", np.abs(theirs).mean())
        assert np.abs(ours - theirs).max() <= 1e-5 * scale
        assert np.abs(theirs).mean() > 0.1        # a live signal, not biases alone


def test_torchvision_padding_with_the_same_weights_differs(network, keras_taps, images):
    """What ignoring the padding costs: Keras's weights in the symmetric (torch) layers move C4 and C5 by
    most of their size (seeded weights on noise images; module docstring)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    normalized = ssd.PixelNormalization((127.5,) * 3, (127.5,) * 3)(inputs)
    taps = mobilenet_v3.mobilenet_v3_large_taps(normalized, reduced_tail=False, padding=presets.TORCH_PADDING)
    backbone = keras.Model(inputs, taps)   # the layers the loader needs, without extras and heads
    assert keras_mobilenet_v3.load_network(backbone, network) == KERAS_WEIGHTS
    outputs = backbone(images[1:])
    for tap, theirs in zip((mobilenet_v3.C4, mobilenet_v3.C5), keras_taps):
        relative = np.abs(np.asarray(outputs[tap]) - theirs).mean() / np.abs(theirs).mean()
        print("relative mean difference", tap, relative)
        assert relative > 0.3, relative


@pytest.fixture(scope="module")
def reduced_backbone():
    """The layers the loader inspects (stem, its padding, the last conv) of a 32-px reduced-tail backbone,
    480 channels at C5: a model the Keras weights do not fit, built in milliseconds."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.ZeroPadding2D(1, name=f"{mobilenet_v3.FIRST_LAYER}_pad")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, name=mobilenet_v3.FIRST_LAYER)(x)
    return keras.Model(inputs, keras.layers.Conv2D(480, 1, name="features_16_conv")(x))


def test_download_failure_is_one_line_asking_for_a_local_file(monkeypatch, reduced_backbone):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2] "
                        "Name or service not known")
    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(OSError, match="^could not download Keras's MobileNetV3Large ImageNet weights: URL fetch "
                                      "failure on .*Name or service not known; pass a local file") as error:
        backbone_loader.load_backbone(reduced_backbone, presets.KERAS_IMAGENET)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="only the SSDLite presets"):
        backbone_loader.load_backbone(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]),
                                      presets.KERAS_IMAGENET)


def test_wrong_files_and_networks_are_refused_in_one_line(tmp_path, network, reduced_backbone):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")])
    dense.save_weights(str(tmp_path / "dense.weights.h5"))
    minimalistic = keras.applications.MobileNetV3Large(input_shape=(32, 32, 3), include_top=False, weights=None,
                                                       minimalistic=True)
    minimalistic.save_weights(str(tmp_path / "minimalistic.weights.h5"))
    # Another alpha's file takes the dense file's branch (no 1x1 160->960 conv): not written again here.
    for name, message in (("notes.h5", "notes.h5: not an HDF5 weights file"),
                          ("dense.weights.h5", r"not the weights of Keras's MobileNetV3Large\(alpha=1.0\): no 1x1 "
                                               r"160->960 conv \(another alpha"),
                          ("minimalistic.weights.h5", "a minimalistic MobileNetV3Large")):
        with pytest.raises(ValueError, match=message) as error:
            backbone_loader.load_backbone(reduced_backbone, str(tmp_path / name))
        assert "\n" not in str(error.value), name
    with pytest.raises(ValueError, match="minimalistic"):
        keras_mobilenet_v3.load_network(reduced_backbone, minimalistic)
    narrow = keras.applications.MobileNetV3Large(input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.75)
    with pytest.raises(ValueError, match="C4 528, C5 720 channels"):
        keras_mobilenet_v3.load_network(reduced_backbone, narrow)
    # The right network into the reduced tail (the preset's default: 480 channels at C5) is refused too.
    with pytest.raises(ValueError, match="the model has 480"):
        keras_mobilenet_v3.load_network(reduced_backbone, network)
