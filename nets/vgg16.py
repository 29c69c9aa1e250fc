"""The reduced-fc VGG16 backbone of SSD (paper §3 "Base network"; Caffe `VGGNetBody(fully_conv=True,
reduced=True, dilated=True)` in ssd_pascal.py).

VGG16 (Simonyan & Zisserman 2015) up to conv5_3, then pool5 changed from 2x2/2 to 3x3/1, and the
fully connected fc6/fc7 turned into convolutions and subsampled: fc6 a 3x3 conv with dilation 6 (the
"atrous" trick, DeepLab-LargeFOV) and 1024 filters, fc7 a 1x1 conv with 1024 filters.

Layer names are the Caffe ones (DESIGN.md); `nets.backbone_loader` maps checkpoint names onto them.
"""

import keras

from nets import layers as ssd_layers

# (layer name, full-width filters) of the 13 VGG16 3x3 convs, in order; a pool follows each block.
VGG16_CONV_BLOCKS = (
    (("conv1_1", 64), ("conv1_2", 64)),
    (("conv2_1", 128), ("conv2_2", 128)),
    (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)),
    (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512)),
    (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)),
)
FC6, FC7 = "fc6", "fc7"
# Reduced fc6/fc7: 1024 of VGG's 4096 filters (paper §3), fc6 atrous with dilation 6.
REDUCED_FC_FILTERS = 1024
FC6_KERNEL_SIZE = 3
FC6_DILATION = 6
CONV4_3 = "conv4_3"
CONV4_3_NORM = "conv4_3_norm"

# The backbone is normally loaded from a checkpoint; from scratch (tests, ablations) He init keeps the
# ReLU activations' variance steady through 15 layers where Glorot would shrink it.
_BACKBONE_KERNEL_INIT = "he_normal"
# conv1_1 sees raw pixels minus the mean, whose standard deviation is ~58 (ImageNet's per-channel
# 58.4/57.1/57.4), not 1. He init divided by that variance gives unit-variance conv1_1 outputs;
# plain He init would carry the x58 through every layer into logits in the hundreds and a loss that
# explodes in the first steps of training from scratch.
_PIXEL_STD = 58.0


def _first_kernel_init():
    # A new initializer per layer: an instance made at import would take its seed from Python's random
    # state then, before any --seed, and every layer sharing it would draw the same numbers.
    return keras.initializers.VarianceScaling(2.0 / _PIXEL_STD ** 2, "fan_in", "truncated_normal")


def _conv(filters, kernel_size, name, dilation_rate=1, kernel_initializer=_BACKBONE_KERNEL_INIT):
    return keras.layers.Conv2D(
        filters, kernel_size, padding="same", dilation_rate=dilation_rate, activation="relu",
        kernel_initializer=kernel_initializer, bias_initializer="zeros", name=name)


def reduced_fc_vgg16(images, config):
    """Applies the backbone to `images` [B, S, S, 3] (RGB minus the ImageNet mean).

    Returns a dict of the two SSD source features, by layer name:
      "conv4_3_norm": [B, S/8, S/8, channels(512)]  (38x38 for S=300, 64x64 for S=512)
      "fc7":          [B, S/16, S/16, channels(1024)]  (19x19, 32x32)
    """
    x = images
    for block_index, block in enumerate(VGG16_CONV_BLOCKS):
        for name, filters in block:
            init = _first_kernel_init() if x is images else _BACKBONE_KERNEL_INIT
            x = _conv(config.channels(filters), 3, name, kernel_initializer=init)(x)
        if name == CONV4_3:
            conv4_3 = x
        if block_index < len(VGG16_CONV_BLOCKS) - 1:
            # Caffe pooling rounds the output size up (ceil mode); for a 2x2/2 window TF's 'same'
            # padding does the same by padding one row/column at the end of odd inputs, so SSD300's
            # pool3 maps 75 -> 38 as in Caffe (a 'valid' pool would give 37).
            x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"pool{block_index + 1}")(x)
    # pool5 3x3/1 pad 1 (paper §3: "change pool5 from 2x2-s2 to 3x3-s1") keeps the 1/16 resolution.
    x = keras.layers.MaxPooling2D(3, strides=1, padding="same", name="pool5")(x)
    x = _conv(config.channels(REDUCED_FC_FILTERS), FC6_KERNEL_SIZE, FC6, dilation_rate=FC6_DILATION)(x)
    fc7 = _conv(config.channels(REDUCED_FC_FILTERS), 1, FC7)(x)
    conv4_3_norm = ssd_layers.L2Normalization(name=CONV4_3_NORM)(conv4_3)
    return {CONV4_3_NORM: conv4_3_norm, FC7: fc7}
