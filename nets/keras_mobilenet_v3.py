"""keras.applications.MobileNetV3Large's ImageNet weights -> the SSDLite presets' full-tail backbone.

Reference: keras/src/applications/mobilenet_v3.py (Keras 3; the network and ImageNet weights of
tf.keras 2, `weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5`). Its MobileNetV3Large(alpha=1.0,
minimalistic=False) is torchvision's mobilenet_v3_large block for block (nets/mobilenet_v3.py):

* the same block table (`_inverted_res_block(x, expansion, filters, kernel, stride, se_ratio, activation,
  block_id)`: expansions 16 * 4 = 64, 24 * 3 = 72, ..., 80 * 2.3 -> 184 through the same `_depth`, which
  is torchvision's `_make_divisible`), the same squeeze channels (`_depth(expanded * 0.25)`), hard-sigmoid
  (ReLU6(x + 3) / 6) and hard-swish, the full tail (the last conv 6 x 160 = 960);
* block_id b (0..14) is our features[b + 1]; layer names `expanded_conv_` (b = 0, no expansion) or
  `expanded_conv_<b>_` + `expand`, `depthwise`, `squeeze_excite_conv` (fc1), `squeeze_excite_conv_1`
  (fc2), `project`, each conv's batch norm `<conv>_bn`; the stem `conv` / `conv_bn` is features[0], the
  last 1x1 `conv_1` / `conv_1_bn` features[16] (`keras_backbone_table`). Our C4 tap (block 13's expansion
  after hard-swish) is the input of Keras's `expanded_conv_12_depthwise_pad` (KERAS_C4_INPUT_OF), C5 its
  output with include_top=False;
* its first layer `Rescaling(1 / 127.5, offset=-1)` is our PixelNormalization with mean = std = 127.5
  (x / 127.5 - 1 = (x - 127.5) / 127.5, equal to float rounding): no weights, nothing to map;
* its padding differs from torchvision's: the stem conv runs 'same' and each stride-2 depthwise conv
  pads `correct_pad` (0 before / 1 after for 3x3 on an even input, 1 / 2 for 5x5), where torchvision
  pads 1 / 1 and 2 / 2. The weights were trained with Keras's, so they load into a model built with
  `backbone_padding="keras"` (nets/mobilenet_v3.py), which pads exactly so;
* batch norm: eps 0.001 in both; Keras trains with momentum 0.999, torchvision's ssdlite with 0.97
  (torch 0.03). The model keeps 0.97, torchvision's detection recipe: momentum is a training setting,
  not a weight.

Two sources (`load_file`, `load_imagenet`), one table: the network is built by Keras itself
(keras.applications.MobileNetV3Large, include_top=False, at the model's input size) with its weights
loaded the way Keras loads them (a legacy .h5 by layer order, a .weights.h5 by structure), then read back
by Keras 3 layer name (`network_weights`) and assigned with nets.weight_table.assign (all or nothing).
"""

import warnings

import numpy as np
from absl import logging

from nets import mobilenet_v3
from nets.weight_table import BIAS, KERNEL, Entry, assign, identity

STEM, LAST_CONV = "conv", "conv_1"
KERAS_C4_INPUT_OF = "expanded_conv_12_depthwise_pad"   # its input is block 13's expansion: our C4
FIRST_SE = "expanded_conv_3_squeeze_excite_conv"       # absent from a minimalistic network
WEIGHTS_FILE = "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"   # what weights="imagenet" fetches
_BATCH_NORM = ("gamma", "beta", "moving_mean", "moving_variance")
_C4_CHANNELS, _C5_CHANNELS = 672, 960                  # alpha 1.0
# Kernels only MobileNetV3Large(alpha=1.0) has (conv_1: 160 -> 960), only its non-minimalistic form
# (squeeze-excitation of the 672-channel blocks: 672 -> _depth(672 / 4) = 168), and only with the
# classifier (conv_2: 960 -> 1280): how load_file tells a file's network without its layer names.
_LAST_CONV_KERNEL, _SQUEEZE_KERNEL, _TOP_CONV_KERNEL = (1, 1, 160, 960), (1, 1, 672, 168), (1, 1, 960, 1280)


def keras_block_prefix(index):
    """Keras's layer-name prefix of our features[index] (1..15): block_id index - 1."""
    return "expanded_conv_" if index == 1 else f"expanded_conv_{index - 1}_"


def _conv_bn(source, layer):
    rows = [Entry(f"{source}/{KERNEL}", layer, KERNEL, identity)]
    return rows + [Entry(f"{source}_bn/{kind}", f"{layer}_bn", kind, identity) for kind in _BATCH_NORM]


def keras_backbone_table():
    """Rows `<keras layer>/<weight>` -> our full-tail backbone (features[0..16]); both are Keras layouts."""
    settings = mobilenet_v3.block_settings(1.0, reduced_tail=False)
    rows = _conv_bn(STEM, mobilenet_v3.FIRST_LAYER)
    for index, (inp, _, expanded, _, se, _, _) in enumerate(settings, start=1):
        prefix, ours = keras_block_prefix(index), f"features_{index}"
        if expanded != inp:
            rows += _conv_bn(prefix + "expand", ours + "_expand")
        rows += _conv_bn(prefix + "depthwise", ours + "_dw")
        if se:
            rows += [Entry(f"{prefix}squeeze_excite_conv{keras_suffix}/{kind}", f"{ours}_se_fc{n}", kind, identity)
                     for n, keras_suffix in ((1, ""), (2, "_1")) for kind in (KERNEL, BIAS)]
        rows += _conv_bn(prefix + "project", ours + "_project")
    return rows + _conv_bn(LAST_CONV, f"features_{len(settings) + 1}_conv")


def network_weights(network):
    """{"<layer>/<weight>": array} of a built Keras network (variable paths, e.g. `conv_bn/gamma`)."""
    return {variable.path: np.asarray(variable.numpy()) for variable in network.weights}


def check_network(network, source):
    """Raises ValueError (one line naming `source`) unless `network` is MobileNetV3Large(alpha=1.0,
    minimalistic=False): a MobileNetV3Small, a minimalistic or another width does not fit the backbone."""
    names = {layer.name for layer in network.layers}
    if KERAS_C4_INPUT_OF not in names or LAST_CONV not in names:
        raise ValueError(f"{source}: not Keras's MobileNetV3Large (no layer {KERAS_C4_INPUT_OF} or {LAST_CONV})")
    if FIRST_SE not in names:
        raise ValueError(f"{source}: a minimalistic MobileNetV3Large (no squeeze-excitation, 3x3 kernels, ReLU); "
                         "SSDLite's backbone is the full network (minimalistic=False)")
    c4, c5 = network.get_layer(KERAS_C4_INPUT_OF).input.shape[-1], network.get_layer(LAST_CONV).filters
    if (c4, c5) != (_C4_CHANNELS, _C5_CHANNELS):
        raise ValueError(f"{source}: a MobileNetV3Large of another width (C4 {c4}, C5 {c5} channels; alpha 1.0 "
                         f"has {_C4_CHANNELS}, {_C5_CHANNELS}): SSDLite's backbone takes alpha=1.0 only")


def _check_model(model, source):
    """The target must be a full-tail, width-1 SSDLite model; a torch-padded one is loaded with a warning."""
    last = model.get_layer(f"features_{len(mobilenet_v3.LARGE_BLOCKS) + 1}_conv")
    if last.filters != _C5_CHANNELS:
        raise ValueError(f"{source} is the full-tail, width-1.0 MobileNetV3-Large ({_C5_CHANNELS} channels at C5); "
                         f"the model has {last.filters} (build it with reduced_tail=False, width_multiplier=1)")
    stem_pad = model.get_layer(f"{mobilenet_v3.FIRST_LAYER}_pad")
    if tuple(stem_pad.padding[0]) != mobilenet_v3.keras_padding(stem_pad.input.shape[1], 3, 2):
        logging.warning("%s: Keras's weights were trained with Keras's padding, the model pads symmetrically "
                        "(backbone_padding='torch'): every stride-2 stage is shifted (docs/training.md)", source)


def load_network(model, network, source="keras.applications.MobileNetV3Large"):
    """Assigns a Keras MobileNetV3Large `network` into `model`'s backbone (built by nets.ssd.build with
    reduced_tail=False, and backbone_padding="keras" for Keras's ImageNet weights); returns the count."""
    check_network(network, source)
    _check_model(model, source)
    return assign(model, network_weights(network), keras_backbone_table(), source)


def _input_shape(model):
    size = model.get_layer(mobilenet_v3.FIRST_LAYER).input.shape[1]
    return (size, size, 3)


def build_network(model, weights, include_top=False):
    """keras.applications.MobileNetV3Large(alpha=1.0, minimalistic=False) at `model`'s input size, with
    `weights` ("imagenet", a weights file or None)."""
    import keras

    # Quiet: "input_shape ... is not 224" (the weights do not depend on it), and Keras 3's warning per
    # container of a .weights.h5 it cannot match (the ValueError that follows says it in one line).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return keras.applications.MobileNetV3Large(input_shape=_input_shape(model), include_top=include_top,
                                                    weights=weights, minimalistic=False, alpha=1.0)


def load_imagenet(model):
    """The --checkpoint_path keras:imagenet route: Keras downloads (or finds in ~/.keras/models) its
    ImageNet weights; a download failure is one line that says to pass a local file instead."""
    try:
        network = build_network(model, "imagenet")
    except Exception as error:    # keras.utils.get_file raises a bare Exception for URL errors
        raise OSError(f"could not download Keras's MobileNetV3Large ImageNet weights: {_first_line(error)}; "
                      f"pass a local file (--checkpoint_path path/to/{WEIGHTS_FILE})") from None
    return load_network(model, network, f"Keras's MobileNetV3Large ImageNet weights ({WEIGHTS_FILE})")


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _weight_shapes(path):
    """The shape of every array in the HDF5 file at `path`. Shapes, not names, tell the network apart:
    the legacy layout names layers as the Keras that wrote it did (tf.keras 2's `Conv/BatchNorm`, Keras
    3's `conv_bn`), and Keras 3's .weights.h5 by class and position (`layers/conv2d_12/vars/0`)."""
    import h5py  # installed with TensorFlow

    shapes = set()
    try:
        with h5py.File(path, "r") as h5:
            h5.visititems(lambda name, item: shapes.add(item.shape) if isinstance(item, h5py.Dataset) else None)
    except OSError as error:
        raise ValueError(f"{path}: not an HDF5 weights file ({error})") from None
    return shapes


def load_file(model, path):
    """A local Keras MobileNetV3Large weights file (legacy .h5, with or without the classifier, or Keras 3
    .weights.h5) into `model`'s backbone; a file of another network is refused in one line."""
    shapes = _weight_shapes(path)
    if _LAST_CONV_KERNEL not in shapes:
        raise ValueError(f"{path}: not the weights of Keras's MobileNetV3Large(alpha=1.0): no 1x1 160->960 conv "
                         "(another alpha, a MobileNetV3Small or another network)")
    if _SQUEEZE_KERNEL not in shapes:
        raise ValueError(f"{path}: weights of a minimalistic MobileNetV3Large (no squeeze-excitation convs); "
                         "SSDLite's backbone is the full network (minimalistic=False)")
    try:
        network = build_network(model, path, include_top=_TOP_CONV_KERNEL in shapes)
    except ValueError as error:
        raise ValueError(f"{path}: not the weights of Keras's MobileNetV3Large(alpha=1.0, minimalistic=False): "
                         f"{_first_line(error)}") from None
    return load_network(model, network, path)
