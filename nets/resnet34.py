"""The ResNet34 backbone of the MLPerf SSD (mlcommons/training single_stage_detector/ssd/base_model.py,
ResNet34 at the v0.7 tag): torchvision's `resnet34` (He et al. 2016, BasicBlock [3, 4, 6, 3]) through
layer3, without layer4, the pooling and the classifier, and with layer3's first block at stride 1
(its conv1 and its downsample conv), so the output keeps layer2's 1/8 resolution: 38x38x256 at 300.

Layer names are torchvision's module paths with "." replaced by "_" (`conv1`, `bn1`,
`layer1_0_conv1`, `layer2_0_downsample_0`, `layer2_0_downsample_1`, …), so `nets.torch_weights`
maps a torchvision state dict by a plain rename.

PyTorch pads symmetrically; TF's 'same' pads the extra row at the end (conv1: 2 before, 3 after on
300 px), which would shift every feature against the pretrained weights. So every strided op pads
explicitly and runs 'valid'. The max pool pads with zeros: it follows a ReLU, so zero padding gives
the same maximum as PyTorch's -inf padding.

Batch norm as torchvision: epsilon 1e-5, running averages with PyTorch momentum 0.1 (Keras 0.9).
"""

import keras

# torchvision resnet34: BasicBlocks per stage; channels 64, 128, 256 (layer4 dropped).
STAGES = (("layer1", 64, 3, 1), ("layer2", 128, 4, 2), ("layer3", 256, 6, 1))  # layer3 stride 2 -> 1
STEM_CHANNELS = 64
OUTPUT = "layer3"
BN_EPSILON = 1e-5            # torch.nn.BatchNorm2d eps
BN_MOMENTUM = 0.9            # = 1 - torch's momentum 0.1
# torchvision initialises convs with kaiming_normal_(mode="fan_out", nonlinearity="relu") and BN with
# weight 1, bias 0 (used only when no pretrained file is loaded).
def _kernel_init():
    # One initializer per layer, made when the model is built (after --seed): a shared module-level
    # instance would fix its seed at import and give every conv of a shape the same initial kernel.
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _conv(x, filters, kernel_size, stride, padding, name):
    if padding:
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, kernel_size, strides=stride, padding="valid", use_bias=False,
                               kernel_initializer=_kernel_init(), name=name)(x)


def _bn(x, name):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _basic_block(x, filters, stride, name):
    """torchvision BasicBlock: conv3x3(stride)-bn-relu-conv3x3-bn, plus identity or 1x1(stride)-bn; relu."""
    shortcut = x
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(_conv(x, filters, 3, stride, 1, f"{name}_conv1"), f"{name}_bn1"))
    y = _bn(_conv(y, filters, 3, 1, 1, f"{name}_conv2"), f"{name}_bn2")
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _bn(_conv(x, filters, 1, stride, 0, f"{name}_downsample_0"), f"{name}_downsample_1")
    return keras.layers.ReLU(name=f"{name}_relu2")(keras.layers.Add(name=f"{name}_add")([y, shortcut]))


def resnet34_layer3(images, config):
    """Applies the backbone to `images` [B, S, S, 3] ((RGB - mean) / std, config.pixel_mean/std).

    Returns {"layer3": [B, S/8, S/8, channels(256)]} (38x38 for S = 300: conv1 /2 -> 150, max pool /2
    -> 75, layer2 /2 -> 38, layer3 at stride 1).
    """
    x = _conv(images, config.channels(STEM_CHANNELS), 7, 2, 3, "conv1")
    x = keras.layers.ReLU(name="relu")(_bn(x, "bn1"))
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    for stage, filters, blocks, stride in STAGES:
        for index in range(blocks):
            x = _basic_block(x, config.channels(filters), stride if index == 0 else 1, f"{stage}_{index}")
    return {OUTPUT: x}


def torchvision_names():
    """Every torchvision parameter/buffer name this backbone holds, with its Keras layer and weight.

    Returns [(torch name, keras layer name, keras weight name)]: conv weights -> kernel; BN weight ->
    gamma, bias -> beta, running_mean -> moving_mean, running_var -> moving_variance.
    """
    bn = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
          ("running_var", "moving_variance"))
    rows = [("conv1.weight", "conv1", "kernel")] + [(f"bn1.{t}", "bn1", k) for t, k in bn]
    for stage, _, blocks, _ in STAGES:
        for index in range(blocks):
            prefix = f"{stage}.{index}"
            convs = [("conv1", "bn1"), ("conv2", "bn2")]
            if index == 0 and stage != "layer1":   # torchvision: a downsample where stride or width changes
                convs.append(("downsample.0", "downsample.1"))
            for conv, norm in convs:
                rows.append((f"{prefix}.{conv}.weight", f"{prefix}.{conv}".replace(".", "_"), "kernel"))
                rows += [(f"{prefix}.{norm}.{t}", f"{prefix}.{norm}".replace(".", "_"), k) for t, k in bn]
    return rows
