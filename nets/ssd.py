"""The SSD network: reduced-fc VGG16 -> extra feature layers -> multibox heads (paper §2.1, Fig. 2).

`config.backbone` "resnet34" builds the MLPerf SSD-ResNet34 instead (mlcommons/training
single_stage_detector/ssd/ssd300.py): nets.resnet34 through layer3 (38x38x256), the config's extra
blocks (1x1 then 3x3, each with ReLU; batch norm after each conv only with `config.extra_batch_norm`,
which the reference does not have), the same 3x3 heads.

`config.backbone` "mobilenet_v3_large" builds torchvision's SSDLite (nets/ssdlite.py): MobileNetV3-Large
taps C4 and C5 (nets/mobilenet_v3.py), depthwise extra blocks and the SSDLite heads (depthwise 3x3 + BN +
ReLU6, then 1x1), flattened in the same anchor order.

`build(config)` maps an image batch [B, S, S, 3], RGB 0-255, uint8 or float, to
    {CLS_LOGITS: [B, A, C + 1], BOX_CODES: [B, A, 4]}
in float32 whatever the Keras dtype policy, where A = config.num_anchors and C = config.num_classes.

Normalization is the model's first layer (`PixelNormalization`: cast to float32, minus config.pixel_mean,
divided by config.pixel_std where a preset has one), not the input pipeline's: so training batches
cross to the accelerator as uint8, a quarter of the float32 bytes, and the cast runs there. Keras
casts the uint8 batch to the float32 input; 0-255 integers are exact in float32. The layer computes in
float32 under any dtype policy (bfloat16 would round the mean-subtracted pixels to 8 significant bits);
conv1_1 casts its output to the compute dtype as before.

Output position k predicts anchor k of `model.anchors.generate(config)`: feature map (largest first),
then row, then column, then box spec. Each head emits [B, H, W, boxes * k] and a row-major reshape to
[B, H * W * boxes, k] puts the box spec innermost, column next, row outermost: exactly that order.
"""

import keras

from dataset import fields
from nets import resnet34, ssdlite, vgg16

BOX_CODE_SIZE = 4                # [ty, tx, th, tw]
HEAD_KERNEL_SIZE = 3             # ssd_pascal.py CreateMultiBoxHead: kernel_size=3, pad=1
CONF_SUFFIX = "_mbox_conf"
LOC_SUFFIX = "_mbox_loc"
NORMALIZATION_LAYER = "pixel_normalization"

# Caffe ssd_pascal.py fills the extra layers and heads with `weight_filler { type: "xavier" }`
# (Glorot uniform) and constant-0 biases.
_NEW_LAYER_KERNEL_INIT = "glorot_uniform"


class PixelNormalization(keras.layers.Layer):
    """RGB 0-255 [B, S, S, 3] (any real or integer dtype) -> float32 (x - mean) / std, per channel.

    DESIGN.md "images into the net": minus the ImageNet mean for the VGG presets (std None: no division).
    """

    def __init__(self, mean, std=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)

    def call(self, images):
        images = keras.ops.cast(images, "float32") - keras.ops.convert_to_tensor(self.mean, "float32")
        if self.std is not None:
            images = images / keras.ops.convert_to_tensor(self.std, "float32")
        return images

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def _new_conv(filters, kernel_size, name, strides=1, padding="valid", activation=None):
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, activation=activation,
        kernel_initializer=_NEW_LAYER_KERNEL_INIT, bias_initializer="zeros", name=name)


def extra_layers(fc7, config):
    """Applies config.extra_layers after fc7; returns {"<name>_2": [B, h, w, channels(out)]} in order."""
    if config.extra_batch_norm:
        return _extra_layers_batch_norm(fc7, config)
    features = {}
    x = fc7
    for spec in config.extra_layers:
        x = _new_conv(config.channels(spec.mid_channels), 1, f"{spec.name}_1", activation="relu")(x)
        # Explicit symmetric padding then a 'valid' conv reproduces Caffe's `pad: p`. TF's 'same'
        # would pick the padding itself: for a stride-2 conv on an even input (10 -> 5) it pads 0
        # before and 1 after, shifting every output by one pixel against the Caffe model; and for
        # SSD512's conv10_2 (4x4, pad 1, 2 -> 1) it would keep the size at 2.
        x = keras.layers.ZeroPadding2D(spec.padding, name=f"{spec.name}_2_pad")(x)
        x = _new_conv(config.channels(spec.out_channels), spec.kernel_size, f"{spec.name}_2",
                      strides=spec.stride, activation="relu")(x)
        features[f"{spec.name}_2"] = x
    return features


def _extra_layers_batch_norm(x, config):
    """extra_layers with conv (no bias) -> batch norm -> ReLU for each conv (NVIDIA's SSD300 style)."""
    features = {}
    for spec in config.extra_layers:
        for suffix, filters, kernel, stride, pad in (("_1", spec.mid_channels, 1, 1, 0),
                                                     ("_2", spec.out_channels, spec.kernel_size, spec.stride,
                                                      spec.padding)):
            name = spec.name + suffix
            if pad:
                x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
            x = keras.layers.Conv2D(config.channels(filters), kernel, strides=stride, use_bias=False,
                                    kernel_initializer=_NEW_LAYER_KERNEL_INIT, name=name)(x)
            x = keras.layers.BatchNormalization(epsilon=resnet34.BN_EPSILON, momentum=resnet34.BN_MOMENTUM,
                                                name=f"{name}_bn")(x)
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
        features[f"{spec.name}_2"] = x
    return features


def backbone_features(images, config):
    """{source name: features} of the backbone and the extra layers, by config.backbone."""
    if config.backbone == "resnet34":
        features = resnet34.resnet34_layer3(images, config)
        features.update(extra_layers(features[resnet34.OUTPUT], config))
        return features
    if config.backbone == "mobilenet_v3_large":
        return ssdlite.backbone_features(images, config)
    if config.backbone != "vgg16":
        raise ValueError(f"{config.name}: unknown backbone {config.backbone!r}; known: vgg16, resnet34, "
                         "mobilenet_v3_large")
    features = vgg16.reduced_fc_vgg16(images, config)
    features.update(extra_layers(features[vgg16.FC7], config))
    return features


def multibox_heads(features, config):
    """Class and box heads over every config.feature_maps source, flattened in anchor order.

    features: {source name: [B, size, size, channels]} holding every config.feature_maps source.
    Returns (cls_logits [B, A, C + 1], box_codes [B, A, 4]) in the compute dtype.
    """
    num_logits = config.num_classes + 1
    conf_parts, loc_parts = [], []
    for spec in config.feature_maps:
        source = features[spec.source]
        boxes = spec.boxes_per_location
        conf = _new_conv(boxes * num_logits, HEAD_KERNEL_SIZE, spec.source + CONF_SUFFIX, padding="same")(source)
        loc = _new_conv(boxes * BOX_CODE_SIZE, HEAD_KERNEL_SIZE, spec.source + LOC_SUFFIX, padding="same")(source)
        # [B, H, W, boxes * k] -> [B, H * W * boxes, k]: row-major, so (row, col, box) with box fastest.
        conf_parts.append(keras.layers.Reshape((-1, num_logits), name=f"{spec.source}{CONF_SUFFIX}_flat")(conf))
        loc_parts.append(keras.layers.Reshape((-1, BOX_CODE_SIZE), name=f"{spec.source}{LOC_SUFFIX}_flat")(loc))
    cls_logits = keras.layers.Concatenate(axis=1, name="mbox_conf")(conf_parts)   # [B, A, C + 1]
    box_codes = keras.layers.Concatenate(axis=1, name="mbox_loc")(loc_parts)      # [B, A, 4]
    return cls_logits, box_codes


def _check_feature_sizes(features, config):
    """Raises ValueError naming every source whose spatial size differs from config.feature_maps."""
    problems = []
    for spec in config.feature_maps:
        if spec.source not in features:
            problems.append(f"{spec.source}: no such layer (have {', '.join(features)})")
            continue
        height, width = features[spec.source].shape[1:3]
        if (height, width) != (spec.size, spec.size):
            problems.append(f"{spec.source}: network gives {height}x{width}, config expects {spec.size}x{spec.size}")
    if problems:
        raise ValueError(f"{config.name} at image_size {config.image_size}: feature maps do not match the "
                         "config's anchor grid:\n  " + "\n  ".join(problems))


def build(config, dtype_policy=None):
    """The SSD Keras model for `config` (an SSDConfig); see the module docstring for its outputs.

    Layers take `dtype_policy` (e.g. "mixed_bfloat16") when given, else the current global Keras
    policy, which is left as it was; the two outputs are cast to float32 by their final layers so
    losses and post-processing always see float32.
    """
    if dtype_policy is not None:
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(dtype_policy)
        try:
            return build(config)
        finally:
            keras.config.set_dtype_policy(previous)
    images = keras.Input(shape=(config.image_size, config.image_size, 3), name="images")
    # pixel_std: (1, 1, 1) for the VGG presets (no division), 255 x ImageNet's std for ResNet34.
    normalized = PixelNormalization(config.pixel_mean, config.pixel_std, name=NORMALIZATION_LAYER)(images)
    features = backbone_features(normalized, config)
    _check_feature_sizes(features, config)
    heads = ssdlite.multibox_heads if config.backbone == "mobilenet_v3_large" else multibox_heads
    cls_logits, box_codes = heads(features, config)
    outputs = {
        fields.CLS_LOGITS: keras.layers.Activation("linear", dtype="float32", name=fields.CLS_LOGITS)(cls_logits),
        fields.BOX_CODES: keras.layers.Activation("linear", dtype="float32", name=fields.BOX_CODES)(box_codes),
    }
    return keras.Model(images, outputs, name=config.name)
