"""SSDLite's extra blocks and heads (MobileNetV2 paper §6.2), as torchvision/models/detection/ssdlite.py
builds them for ssdlite320_mobilenet_v3_large.

* Extra block (`_extra_block`), one per config.extra_layers entry after the backbone's C5: 1x1 conv to
  half the output channels, BN, ReLU6; depthwise 3x3 stride 2 (symmetric padding 1), BN, ReLU6; 1x1 conv
  to the output channels, BN, ReLU6. Layers `<name>_1`, `<name>_2` (depthwise), `<name>_3`, each with
  `_bn`; the block's output is features[<name>]. 10 -> 5 -> 3 -> 2 -> 1 at 320 px.
* Head (`_prediction_block`), per feature map and per kind: depthwise 3x3 without bias, BN, ReLU6, then a
  1x1 conv with bias to boxes x k outputs. Layers `<source>_mbox_conf_dw` (+ `_bn`) and
  `<source>_mbox_conf` (likewise `_mbox_loc`): the 1x1 conv keeps nets.ssd's head name, and its
  [B, H, W, boxes * k] output is flattened exactly as nets.ssd's heads are (box spec fastest), which is
  also torchvision's order (SSDScoringHead views [N, boxes, k, H, W] and permutes to [N, H, W, boxes, k]).

Channels of a block are config.channels(spec.out_channels) and config.channels(spec.mid_channels) (the
preset's mid is out // 2, as torchvision's `intermediate_channels`); at width 1 these are torchvision's.

Initialisation as torchvision's `_normal_init`: every conv weight N(0, 0.03), biases 0.
"""

import keras

from nets import mobilenet_v3

BOX_CODE_SIZE = 4
HEAD_KERNEL_SIZE = 3
CONF_SUFFIX = "_mbox_conf"
LOC_SUFFIX = "_mbox_loc"


def extra_blocks(c5, config):
    """Applies config.extra_layers after C5; returns {spec.name: [B, h, w, channels(out)]} in order."""
    features = {}
    x = c5
    for spec in config.extra_layers:
        mid = config.channels(spec.mid_channels)
        x = mobilenet_v3.conv_bn(x, mid, 1, f"{spec.name}_1", activation="relu6")
        x = mobilenet_v3.conv_bn(x, mid, spec.kernel_size, f"{spec.name}_2", stride=spec.stride,
                                 activation="relu6", depthwise=True)
        x = mobilenet_v3.conv_bn(x, config.channels(spec.out_channels), 1, f"{spec.name}_3", activation="relu6")
        features[spec.name] = x
    return features


def backbone_features(images, config):
    """{source name: features}: the MobileNetV3-Large taps C4, C5 and the extra blocks.

    config.backbone_padding applies to the MobileNetV3 features only: the extra blocks and heads are
    torchvision's, padded symmetrically in both modes (no Keras weights exist for them).
    """
    features = mobilenet_v3.mobilenet_v3_large_taps(images, config.width_multiplier, config.reduced_tail,
                                                    config.backbone_padding)
    features.update(extra_blocks(features[mobilenet_v3.C5], config))
    return features


def _prediction_block(source, outputs, name):
    x = mobilenet_v3.conv_bn(source, source.shape[-1], HEAD_KERNEL_SIZE, f"{name}_dw", activation="relu6",
                             depthwise=True)
    return keras.layers.Conv2D(outputs, 1, kernel_initializer=keras.initializers.RandomNormal(
        stddev=mobilenet_v3.INIT_STDDEV), bias_initializer="zeros", name=name)(x)


def multibox_heads(features, config):
    """SSDLite class and box heads over config.feature_maps, flattened in anchor order.

    Returns (cls_logits [B, A, C + 1], box_codes [B, A, 4]) in the compute dtype.
    """
    num_logits = config.num_classes + 1
    conf_parts, loc_parts = [], []
    for spec in config.feature_maps:
        source = features[spec.source]
        boxes = spec.boxes_per_location
        conf = _prediction_block(source, boxes * num_logits, spec.source + CONF_SUFFIX)
        loc = _prediction_block(source, boxes * BOX_CODE_SIZE, spec.source + LOC_SUFFIX)
        # [B, H, W, boxes * k] -> [B, H * W * boxes, k]: row-major, so (row, col, box) with box fastest.
        conf_parts.append(keras.layers.Reshape((-1, num_logits), name=f"{spec.source}{CONF_SUFFIX}_flat")(conf))
        loc_parts.append(keras.layers.Reshape((-1, BOX_CODE_SIZE), name=f"{spec.source}{LOC_SUFFIX}_flat")(loc))
    cls_logits = keras.layers.Concatenate(axis=1, name="mbox_conf")(conf_parts)   # [B, A, C + 1]
    box_codes = keras.layers.Concatenate(axis=1, name="mbox_loc")(loc_parts)      # [B, A, 4]
    return cls_logits, box_codes
