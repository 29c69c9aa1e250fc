"""MobileNetV3-Large (Howard et al. 2019) as torchvision builds it, cut for SSDLite's two taps.

Follows torchvision/models/mobilenetv3.py (`_mobilenet_v3_conf("mobilenet_v3_large")`, `MobileNetV3`,
`InvertedResidual`) and torchvision/models/detection/ssdlite.py (`SSDLiteFeatureExtractorMobileNet`):

* features[0]: 3x3 stride-2 conv to 16, BN, hardswish;
* features[1..15]: the inverted residual blocks of `LARGE_BLOCKS` (1x1 expansion unless the expansion
  equals the input, depthwise k x k, squeeze-excitation where marked, 1x1 linear projection; a residual
  add where stride 1 and input == output);
* features[16]: 1x1 conv to 6 x the last block's output, BN, hardswish.

"Reduced tail" (paper Table 6, torchvision `reduced_tail=True`, what ssdlite320_mobilenet_v3_large builds
when no ImageNet backbone is given): the last three blocks have 160 // 2 outputs and 960 // 2 expansions,
so features[16] gives 480 channels instead of 960.

SSDLite's taps (MobileNetV3 paper §6.3): C4 is the output of the expansion (1x1 112 -> 672, BN,
hardswish) of features[13], the stride-2 block that opens the 1/32 stage, taken before its depthwise
conv: 20x20x672 at 320 px. C5 is features[16]: 10x10x480 (reduced) or 960 (full tail).

Layer names are torchvision's module paths: `features_<i>_conv` / `_bn` for features[0] and [16];
`features_<i>_expand`, `_dw`, `_se_fc1`, `_se_fc2`, `_project` (+ `_bn` after each conv) for the blocks.

PyTorch pads symmetrically ((k - 1) // 2 each side); TF's 'same' puts the odd pixel at the end of a
stride-2 conv on an even input (320 -> 160 with k 3: 0 before, 1 after), which shifts the whole grid
against torchvision's. So every conv with a spatial kernel pads explicitly and runs 'valid', by
`padding` (config.backbone_padding): "torch" (the default) pads as above, for torchvision's weights;
"keras" pads every stride-2 conv as keras.applications.MobileNetV3Large does, for Keras's ImageNet weights
(nets/keras_mobilenet_v3.py): its stem conv runs 'same' and its stride-2 depthwise convs pad
`imagenet_utils.correct_pad`, both (k // 2 - 1, k // 2) on an even input and (k // 2, k // 2) on an odd
one (`keras_padding`). Stride-1 convs pad (k - 1) // 2 each side in both modes ('same' for odd k).

Batch norm: eps 0.001, torch momentum 0.03 (= Keras momentum 0.97), what ssdlite320_mobilenet_v3_large
passes as its norm_layer. Initialisation: torchvision's ssdlite re-initialises a backbone it did not
load (`_normal_init`): every conv weight N(0, 0.03), biases 0; BN weight 1, bias 0.
"""

import keras

from model import presets

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.97              # = 1 - torch momentum 0.03
INIT_STDDEV = 0.03              # ssdlite.py _normal_init
CHANNEL_DIVISOR = 8             # torchvision _make_divisible
STEM_CHANNELS = 16
FIRST_LAYER = "features_0_conv"                     # its stem conv; nets/backbone_loader.py finds the backbone by it
LAST_CONV_EXPANSION = 6         # features[16]: 6 x the last block's output channels
C4_BLOCK = 13                   # features index of the first stride-2 block of the 1/32 stage
C4, C5 = "c4", "c5"             # the two taps (sources of the first two SSDLite heads)

# torchvision _mobilenet_v3_conf, "mobilenet_v3_large": per block (input, kernel, expanded, output,
# squeeze-excitation, hardswish (else ReLU), stride). The last three entries are the tail, whose
# channels `reduced_tail` halves.
LARGE_BLOCKS = (
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)
TAIL_BLOCKS = 3
TAIL_CHANNELS = (160, 960)      # the counts reduced_tail halves in those blocks


def make_divisible(value, divisor=CHANNEL_DIVISOR):
    """torchvision `_make_divisible`: nearest multiple of divisor, at least divisor, never < 90% of value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def block_settings(width_multiplier=1.0, reduced_tail=True):
    """LARGE_BLOCKS as torchvision configures them: [(input, kernel, expanded, output, se, hs, stride)].

    With `reduced_tail`, the tail's 160s and 960s are halved (torchvision writes `160 // reduce_divider`
    and `960 // reduce_divider` there; block 13's 112 input and 672 expansion stay); then every channel
    count becomes make_divisible(c * width_multiplier) (`InvertedResidualConfig.adjust_channels`).
    """
    settings = []
    for index, (inp, kernel, expanded, out, se, hs, stride) in enumerate(LARGE_BLOCKS):
        channels = (inp, expanded, out)
        if reduced_tail and index >= len(LARGE_BLOCKS) - TAIL_BLOCKS:
            channels = tuple(c // 2 if c in TAIL_CHANNELS else c for c in channels)
        inp, expanded, out = (make_divisible(c * width_multiplier) for c in channels)
        settings.append((inp, kernel, expanded, out, se, hs, stride))
    return settings


def _init():
    # One initializer per layer, made at build time (after --seed), as nets.resnet34 explains.
    return keras.initializers.RandomNormal(stddev=INIT_STDDEV)


def keras_padding(size, kernel_size, stride):
    """(before, after) zero padding of one spatial axis of `size` pixels where Keras pads 'same' or
    `correct_pad`: for a stride-2 odd kernel both give (k // 2 - 1, k // 2) on an even size and
    (k // 2, k // 2) on an odd one (3x3 on 320: 0, 1; 5x5 on 80: 1, 2); stride 1 is symmetric."""
    if stride == 1:
        return ((kernel_size - 1) // 2,) * 2
    if size is None:
        raise ValueError("Keras-style padding of a stride-2 conv needs a static input size")
    return (kernel_size // 2 - (1 - size % 2), kernel_size // 2)


def _padding(x, kernel_size, stride, padding):
    """ZeroPadding2D's ((top, bottom), (left, right)) for a conv on x, by `padding` (module docstring)."""
    if padding == presets.TORCH_PADDING:
        return (((kernel_size - 1) // 2,) * 2,) * 2
    if padding == presets.KERAS_PADDING:
        return tuple(keras_padding(size, kernel_size, stride) for size in x.shape[1:3])
    raise ValueError(f"unknown backbone padding {padding!r}; known: {', '.join(presets.BACKBONE_PADDINGS)}")


def conv_bn(x, filters, kernel_size, name, stride=1, activation=None, depthwise=False,
            padding=presets.TORCH_PADDING):
    """torchvision Conv2dNormActivation: (depthwise) conv without bias, explicit padding, BN, activation.

    `activation`: a Keras activation name ("relu", "relu6", "hard_silu") or None (linear projection).
    `padding`: presets.BACKBONE_PADDINGS, "torch" (symmetric) or "keras" (module docstring).
    """
    if kernel_size > 1:
        x = keras.layers.ZeroPadding2D(_padding(x, kernel_size, stride, padding), name=f"{name}_pad")(x)
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel_size, strides=stride, use_bias=False,
                                         depthwise_initializer=_init(), name=name)(x)
    else:
        x = keras.layers.Conv2D(filters, kernel_size, strides=stride, use_bias=False,
                                kernel_initializer=_init(), name=name)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_act")(x)
    return x


def _squeeze_excitation(x, name):
    """torchvision SqueezeExcitation: mean -> 1x1 (bias) -> ReLU -> 1x1 (bias) -> hardsigmoid -> x * scale."""
    channels = x.shape[-1]
    squeeze = make_divisible(channels // 4)
    scale = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    scale = keras.layers.Conv2D(squeeze, 1, activation="relu", kernel_initializer=_init(),
                                bias_initializer="zeros", name=f"{name}_fc1")(scale)
    scale = keras.layers.Conv2D(channels, 1, activation="hard_sigmoid", kernel_initializer=_init(),
                                bias_initializer="zeros", name=f"{name}_fc2")(scale)
    return keras.layers.Multiply(name=f"{name}_scale")([x, scale])


def _inverted_residual(x, setting, name, padding, taps=None):
    """One InvertedResidual on x; with `taps` (a dict) records the expansion output as taps[C4]."""
    inp, kernel, expanded, out, se, hs, stride = setting
    activation = "hard_silu" if hs else "relu"
    y = x
    if expanded != inp:
        y = conv_bn(y, expanded, 1, f"{name}_expand", activation=activation)
        if taps is not None:
            taps[C4] = y
    y = conv_bn(y, expanded, kernel, f"{name}_dw", stride=stride, activation=activation, depthwise=True,
                padding=padding)
    if se:
        y = _squeeze_excitation(y, f"{name}_se")
    y = conv_bn(y, out, 1, f"{name}_project")
    if stride == 1 and inp == out:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def mobilenet_v3_large_taps(images, width_multiplier=1.0, reduced_tail=True, padding=presets.TORCH_PADDING):
    """Applies the backbone to `images` [B, S, S, 3] (already scaled to [-1, 1]), its convs padded by
    `padding` (presets.BACKBONE_PADDINGS: "torch" or "keras", module docstring).

    Returns {C4: [B, S/16, S/16, 672 * w], C5: [B, S/32, S/32, 480 or 960 * w]} (20 and 10 at S = 320).
    """
    settings = block_settings(width_multiplier, reduced_tail)
    x = conv_bn(images, make_divisible(STEM_CHANNELS * width_multiplier), 3, FIRST_LAYER, stride=2,
                activation="hard_silu", padding=padding)
    taps = {}
    for index, setting in enumerate(settings, start=1):
        x = _inverted_residual(x, setting, f"features_{index}", padding, taps if index == C4_BLOCK else None)
    last = len(settings) + 1
    taps[C5] = conv_bn(x, LAST_CONV_EXPANSION * settings[-1][3], 1, f"features_{last}_conv",
                       activation="hard_silu")
    return taps
