"""Model presets: the paper's numbers, in one place.

`get(name, num_classes, **overrides)` returns a frozen `SSDConfig`. Every number below comes from the
SSD paper (Liu et al., ECCV 2016) and the released Caffe models (`ssd_pascal.py`, `ssd_pascal_512.py`);
derived numbers (boxes per location, number of anchors) are computed, never stored.

`num_classes` is C, the number of object classes, without background: logits have C + 1 columns.
"""

import dataclasses
from typing import Tuple

# ImageNet mean of the VGG16 weights, RGB order (DESIGN.md: images into the net).
IMAGENET_MEAN_RGB = (123.68, 116.78, 103.94)
# The MLPerf SSD-ResNet34 reference feeds torchvision's normalisation, (x / 255 - mean) / std with the
# ImageNet RGB mean and std below (single_stage_detector/ssd/utils.py SSDTransformer); in 0-255 units
# that is (x - 255 mean) / (255 std), which is what config.pixel_mean / config.pixel_std hold.
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)
# Loss normalisations (model/losses.py): Caffe divides the batch's loss by the batch's positives; the
# MLPerf reference divides each image's loss by its own positives and averages over the batch.
BATCH_POSITIVES, PER_IMAGE = "batch_positives", "per_image"
LOSS_NORMALIZATIONS = (BATCH_POSITIVES, PER_IMAGE)
BACKBONES = ("vgg16", "resnet34", "mobilenet_v3_large")
# How the MobileNetV3-Large backbone pads its convs (nets/mobilenet_v3.py): symmetrically as PyTorch
# does, for torchvision's weights, or as keras.applications.MobileNetV3Large does ('same' / correct_pad:
# the odd pixel after), for Keras's ImageNet weights.
TORCH_PADDING, KERAS_PADDING = "torch", "keras"
BACKBONE_PADDINGS = (TORCH_PADDING, KERAS_PADDING)
# The --checkpoint_path value that takes the backbone from keras.applications.MobileNetV3Large's ImageNet
# download (nets/keras_mobilenet_v3.py) rather than from a file.
KERAS_IMAGENET = "keras:imagenet"
# Box-code variances of Caffe's PriorBox (ssd_pascal.py prior_variance): [ty, tx, th, tw].
VARIANCES = (0.1, 0.1, 0.2, 0.2)


@dataclasses.dataclass(frozen=True)
class FeatureMapSpec:
    """One prediction source: its layer, grid size and anchor settings (pixels of the input)."""

    source: str                          # layer name; heads are <source>_mbox_conf / _mbox_loc
    size: int                            # feature map is size x size
    step: float                          # anchor centre spacing in pixels
    min_size: float                      # side of the first square anchor, pixels
    max_size: float                      # second square anchor is sqrt(min_size * max_size)
    aspect_ratios: Tuple[float, ...]     # each r adds the pair (r, 1/r)

    @property
    def boxes_per_location(self) -> int:
        return 2 + 2 * len(self.aspect_ratios)


@dataclasses.dataclass(frozen=True)
class ExtraLayerSpec:
    """A Caffe SSD extra block: <name>_1 (1x1, mid) then <name>_2 (k x k, out, stride, padding)."""

    name: str                 # e.g. "conv6" -> layers conv6_1 and conv6_2
    mid_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    padding: int              # explicit symmetric zero padding, as in Caffe


@dataclasses.dataclass(frozen=True)
class SSDConfig:
    name: str
    num_classes: int                              # C, object classes only
    image_size: int                               # S: the net sees S x S images
    feature_maps: Tuple[FeatureMapSpec, ...]
    extra_layers: Tuple[ExtraLayerSpec, ...]
    width_multiplier: float = 1.0                 # scales every conv's channels (not the heads' outputs)
    pixel_mean: Tuple[float, float, float] = IMAGENET_MEAN_RGB
    variances: Tuple[float, float, float, float] = VARIANCES
    match_threshold: float = 0.5                  # anchor/gt IoU for a positive (paper §2.2)
    negative_ratio: float = 3.0                   # hard negatives per positive (paper §2.2)
    score_threshold: float = 0.01                 # post-processing (ssd_pascal.py, test phase)
    nms_iou_threshold: float = 0.45
    max_detections_per_class: int = 400
    max_detections: int = 200
    backbone: str = "vgg16"                       # BACKBONES; nets.ssd.build dispatches on it
    pixel_std: Tuple[float, float, float] = (1.0, 1.0, 1.0)   # net input = (RGB 0-255 - mean) / std
    # Anchor clipping, model/anchors.py ANCHOR_CLIPS: "none" (Caffe), "center_size" (MLPerf DefaultBoxes:
    # centre and size clamped to [0, 1]) or "size" (torchvision DefaultBoxGenerator clip=True: width and
    # height clamped, centres kept).
    anchor_clip: str = "none"
    # Clip decoded boxes to the image before NMS (torchvision's postprocess_detections); False clips the
    # kept boxes after NMS (Caffe DetectionOutput, tf.image.combined_non_max_suppression clip_boxes).
    clip_boxes_before_nms: bool = False
    loss_normalization: str = BATCH_POSITIVES     # LOSS_NORMALIZATIONS (model/losses.py)
    extra_batch_norm: bool = False                # batch norm after each extra conv (not in the reference)
    # Anchor <-> box matching rule, model/matcher.py: "caffe_bipartite" (Caffe MatchBBox) or
    # "ssd_pytorch" (ssd.pytorch's match, for comparison).
    matching: str = "caffe_bipartite"
    # Caffe's PriorBoxLayer reads min/max sizes into an `int` (SSD512's 35.84 px acts as 35); the VGG
    # presets set True so Caffe-trained weights see their own anchors. False keeps the sizes as given.
    integer_prior_sizes: bool = False
    # COCO crowd boxes in training, model/targets.py CROWD_RULES: "ignore" (not matched; unmatched anchors
    # mostly inside one are ignored) or "positive" (ordinary boxes, as the MLPerf reference trains them).
    crowd_boxes: str = "ignore"
    # MobileNetV3-Large only (nets/mobilenet_v3.py): the reduced tail (paper Table 6) halves the last
    # three blocks, as torchvision builds it without an ImageNet backbone; False is the full network.
    reduced_tail: bool = False
    # MobileNetV3-Large only: BACKBONE_PADDINGS, "keras" for Keras's ImageNet weights (a model_dir's
    # config written before this field existed reads as "torch", which is what it was built with).
    backbone_padding: str = TORCH_PADDING

    @property
    def num_anchors(self) -> int:
        return sum(fm.size * fm.size * fm.boxes_per_location for fm in self.feature_maps)

    @property
    def boxes_per_location(self) -> Tuple[int, ...]:
        return tuple(fm.boxes_per_location for fm in self.feature_maps)

    def channels(self, base: int) -> int:
        """Channels of a conv layer whose full-width count is `base`, under the width multiplier."""
        return max(1, int(round(base * self.width_multiplier)))


def _feature_maps(sources, sizes, steps, min_sizes, max_sizes, ratios):
    return tuple(FeatureMapSpec(*spec) for spec in zip(sources, sizes, steps, min_sizes, max_sizes, ratios))


_SSD300 = dict(
    image_size=300,
    integer_prior_sizes=True,      # Caffe PriorBoxLayer (whole numbers here: no effect)
    feature_maps=_feature_maps(
        ("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"),
        (38, 19, 10, 5, 3, 1),
        (8, 16, 32, 64, 100, 300),
        (30, 60, 111, 162, 213, 264),
        (60, 111, 162, 213, 264, 315),
        ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    ),
    extra_layers=(
        ExtraLayerSpec("conv6", 256, 512, 3, 2, 1),   # 19 -> 10
        ExtraLayerSpec("conv7", 128, 256, 3, 2, 1),   # 10 -> 5
        ExtraLayerSpec("conv8", 128, 256, 3, 1, 0),   # 5 -> 3
        ExtraLayerSpec("conv9", 128, 256, 3, 1, 0),   # 3 -> 1
    ),
)

_SSD512 = dict(
    image_size=512,
    integer_prior_sizes=True,      # Caffe PriorBoxLayer: 35.84 -> 35, 76.8 -> 76, ...
    feature_maps=_feature_maps(
        ("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2", "conv10_2"),
        (64, 32, 16, 8, 4, 2, 1),
        (8, 16, 32, 64, 128, 256, 512),
        (35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
        (76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
        ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    ),
    extra_layers=(
        ExtraLayerSpec("conv6", 256, 512, 3, 2, 1),   # 32 -> 16
        ExtraLayerSpec("conv7", 128, 256, 3, 2, 1),   # 16 -> 8
        ExtraLayerSpec("conv8", 128, 256, 3, 2, 1),   # 8 -> 4
        ExtraLayerSpec("conv9", 128, 256, 3, 2, 1),   # 4 -> 2
        ExtraLayerSpec("conv10", 128, 256, 4, 1, 1),  # 2 -> 1
    ),
)

# MLPerf SSD-ResNet34 (mlcommons/training single_stage_detector/ssd at v0.7: ssd300.py, utils.py
# dboxes300_coco, base_model.py): torchvision ResNet34 through layer3 with layer3's first block at
# stride 1 (38x38x256), five extra blocks (1x1 then 3x3, ReLU after each, biases, no batch norm), 3x3
# heads. Default boxes from the scales 21..315 (min = scales[k], max = scales[k + 1]) with Caffe's
# steps, clamped in centre-size form (DefaultBoxes.dboxes.clamp_(0, 1)).
_SSD300_RESNET34 = dict(
    image_size=300,
    feature_maps=_feature_maps(
        ("layer3", "conv7_2", "conv8_2", "conv9_2", "conv10_2", "conv11_2"),
        (38, 19, 10, 5, 3, 1),
        (8, 16, 32, 64, 100, 300),
        (21, 45, 99, 153, 207, 261),
        (45, 99, 153, 207, 261, 315),
        ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    ),
    # ssd300.py _build_additional_features: (mid, out, stride, padding) per block.
    extra_layers=(
        ExtraLayerSpec("conv7", 256, 512, 3, 2, 1),    # 38 -> 19
        ExtraLayerSpec("conv8", 256, 512, 3, 2, 1),    # 19 -> 10
        ExtraLayerSpec("conv9", 128, 256, 3, 2, 1),    # 10 -> 5
        ExtraLayerSpec("conv10", 128, 256, 3, 1, 0),   # 5 -> 3
        ExtraLayerSpec("conv11", 128, 256, 3, 1, 0),   # 3 -> 1
    ),
    backbone="resnet34",
    pixel_mean=tuple(255.0 * m for m in TORCHVISION_MEAN_RGB),
    pixel_std=tuple(255.0 * s for s in TORCHVISION_STD_RGB),
    anchor_clip="center_size",
    loss_normalization=PER_IMAGE,
    # train.py coco_eval: encoder.decode_batch(..., overlap_threshold=0.50, nms_max_detections=200,
    # nms_valid_thresh=0.05): scores > 0.05, NMS at IoU 0.50 (decode_batch's 0.45 is only a default that
    # coco_eval overrides), 200 candidates per class and 200 per image.
    score_threshold=0.05,
    nms_iou_threshold=0.5,
    max_detections_per_class=200,
    # utils.py Encoder.encode: every box takes its best prior, a later box overwriting an earlier one
    # on a shared prior (model/matcher.py SSD_PYTORCH); other priors take their best box when IoU > 0.5,
    # strictly: our matcher keeps IoU >= threshold, so the threshold is the next float32 above 0.5.
    matching="ssd_pytorch",
    match_threshold=0.50000006,
    # COCODetection reads every annotation, iscrowd or not, as a box to train on.
    crowd_boxes="positive",
)


# COCO (Caffe ssd_coco.py and its 512 variant): the same nets with smaller anchors, from min_ratio 15
# (300) / 10 (512) to max_ratio 90 in steps of int((90 - min_ratio) / (layers - 2)) = 18 / 16 percent
# of the input, the first layer at 7% / 4% (max = min_ratio%). E.g. SSD300: 300 * 7% = 21, then
# 300 * (15, 33, 51, 69, 87)% = 45, 99, 153, 207, 261, max sizes the next ratio up, ending at 300 * 105%.
_SSD300_COCO = dict(_SSD300, feature_maps=tuple(
    FeatureMapSpec(fm.source, fm.size, fm.step, lo, hi, fm.aspect_ratios)
    for fm, lo, hi in zip(_SSD300["feature_maps"], (21, 45, 99, 153, 207, 261),
                          (45, 99, 153, 207, 261, 315))))
_SSD512_COCO = dict(_SSD512, feature_maps=tuple(
    FeatureMapSpec(fm.source, fm.size, fm.step, lo, hi, fm.aspect_ratios)
    for fm, lo, hi in zip(_SSD512["feature_maps"], (20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8),
                          (51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72))))


# SSDLite320 with MobileNetV3-Large, torchvision's ssdlite320_mobilenet_v3_large
# (torchvision/models/detection/ssdlite.py, anchor_utils.py DefaultBoxGenerator):
# * feature maps C4 (20x20x672), C5 (10x10x480, reduced tail), then four depthwise extra blocks to 512,
#   256, 256, 128 channels (mid = out // 2) at 5, 3, 2, 1; SSDLite heads (nets/ssdlite.py);
# * DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95), clip=True: scales
#   s_k = 0.2 + 0.75 k / 5 (0.2, 0.35, 0.5, 0.65, 0.8, 0.95) and s_6 = 1.0; per location the s_k square,
#   the sqrt(s_k s_k+1) square and the pairs for ratios 2 and 3: 6 boxes, 3,234 anchors. Without `steps`
#   torchvision centres cell j at (j + 0.5) / f_k, i.e. step = 320 / f_k pixels (16, 32, 64, 106.67,
#   160, 320); min/max sizes are s_k x 320 and s_k+1 x 320 pixels. Only width and height are clamped
#   to [0, 1] (anchor_clip "size");
# * RGB to [-1, 1] ((x / 255 - 0.5) / 0.5, the SSD transform's image_mean = image_std = 0.5);
# * torchvision's SSDMatcher (IoU 0.5, then every box claims its best anchor, a later box winning a
#   shared one) is ssd.pytorch's rule; the loss divides by the batch's positives with 3:1 mining;
# * postprocess_detections: decoded boxes clipped to the image, score > 0.001, top 300 per class, NMS
#   0.55, 300 per image.
SSDLITE_MIN_RATIO, SSDLITE_MAX_RATIO = 0.2, 0.95
_SSDLITE_SIZES = (20, 10, 5, 3, 2, 1)
_SSDLITE_SCALES = tuple(SSDLITE_MIN_RATIO + (SSDLITE_MAX_RATIO - SSDLITE_MIN_RATIO) * k / (len(_SSDLITE_SIZES) - 1.0)
                        for k in range(len(_SSDLITE_SIZES))) + (1.0,)
_SSDLITE320 = dict(
    image_size=320,
    feature_maps=_feature_maps(
        ("c4", "c5", "extra_1", "extra_2", "extra_3", "extra_4"),
        _SSDLITE_SIZES,
        tuple(320 / size for size in _SSDLITE_SIZES),
        tuple(320 * scale for scale in _SSDLITE_SCALES[:-1]),
        tuple(320 * scale for scale in _SSDLITE_SCALES[1:]),
        ((2, 3),) * len(_SSDLITE_SIZES),
    ),
    # ssdlite.py _extra_block(in, out): 1x1 to out // 2, depthwise 3x3 stride 2 padding 1, 1x1 to out.
    extra_layers=(
        ExtraLayerSpec("extra_1", 256, 512, 3, 2, 1),   # 10 -> 5
        ExtraLayerSpec("extra_2", 128, 256, 3, 2, 1),   # 5 -> 3
        ExtraLayerSpec("extra_3", 128, 256, 3, 2, 1),   # 3 -> 2
        ExtraLayerSpec("extra_4", 64, 128, 3, 2, 1),    # 2 -> 1
    ),
    backbone="mobilenet_v3_large",
    reduced_tail=True,
    pixel_mean=(127.5, 127.5, 127.5),
    pixel_std=(127.5, 127.5, 127.5),
    anchor_clip="size",
    matching="ssd_pytorch",
    score_threshold=0.001,
    nms_iou_threshold=0.55,
    max_detections_per_class=300,
    max_detections=300,
    clip_boxes_before_nms=True,
)

_PRESETS = {"ssd300_vgg16": _SSD300, "ssd512_vgg16": _SSD512,
            "ssd300_vgg16_coco": _SSD300_COCO, "ssd512_vgg16_coco": _SSD512_COCO,
            "ssd300_resnet34": _SSD300_RESNET34,
            "ssdlite320_mobilenet_v3_large": _SSDLITE320}


# torchvision's SSD300-VGG16 (torchvision/models/detection/ssd.py ssd300_vgg16, the published
# ssd300_vgg16_coco-b556d3b4.pth; its weights load through nets/torchvision_ssd.py): the COCO SSD300
# above (DefaultBoxGenerator scales 0.07 ... 1.05 = 21 ... 315 px, steps 8 ... 300, the same aspect
# ratios; score 0.01, 400 per class, NMS 0.45, 200 per image) with its own input and box handling:
# RGB / 255 minus (0.48235, 0.45882, 0.40784), divided by std 1/255, i.e. 0-255 RGB minus 255 x that
# mean with pixel_std 1; anchors clipped in width and height only (clip=True); decoded boxes clipped to
# the image before NMS (postprocess_detections). Its box-code weights 10, 10, 5, 5 are our variances.
TORCHVISION_SSD300_MEAN_RGB = (0.48235, 0.45882, 0.40784)
_SSD300_TORCHVISION = dict(
    _SSD300_COCO,
    pixel_mean=tuple(255.0 * m for m in TORCHVISION_SSD300_MEAN_RGB),
    anchor_clip="size",
    clip_boxes_before_nms=True,
    integer_prior_sizes=False,     # torchvision keeps its scales as fractions (21 ... 315 are whole)
)
_PRESETS["ssd300_vgg16_torchvision"] = _SSD300_TORCHVISION

NAMES = tuple(sorted(_PRESETS))


def get(name: str, num_classes: int, **overrides) -> SSDConfig:
    """The preset `name` for `num_classes` object classes; `overrides` replace any other field."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(NAMES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (object classes, without background), got {num_classes}")
    config = SSDConfig(name=name, num_classes=num_classes, **_PRESETS[name])
    return dataclasses.replace(config, **overrides) if overrides else config


def to_json(config: SSDConfig) -> str:
    """The whole config as JSON, so a model_dir can rebuild its model without the original flags."""
    import json
    return json.dumps(dataclasses.asdict(config), indent=2)


def from_json(text: str) -> SSDConfig:
    import json
    values = json.loads(text)
    values["feature_maps"] = tuple(FeatureMapSpec(**dict(fm, aspect_ratios=tuple(fm["aspect_ratios"])))
                                   for fm in values["feature_maps"])
    values["extra_layers"] = tuple(ExtraLayerSpec(**e) for e in values["extra_layers"])
    for key in ("pixel_mean", "variances", "pixel_std"):
        if key in values:
            values[key] = tuple(values[key])
    if "clip_anchors" in values:   # model_dirs written before anchor_clip had three modes
        values["anchor_clip"] = "center_size" if values.pop("clip_anchors") else "none"
    return SSDConfig(**values)


def with_anchor_config(config: SSDConfig, anchor_config: dict) -> SSDConfig:
    """`config` with the min sizes, max sizes and aspect ratios of `anchor_config` (the dict of an
    anchor file, analyze_dataset.py --fit_anchors). Everything that shapes the network must agree:
    image size, and per feature map its source, grid size, step and number of aspect ratios (so the
    boxes per cell, the heads and the parameter count stay). Raises ValueError naming the difference.
    """
    maps = anchor_config.get("feature_maps")
    if not isinstance(maps, list) or len(maps) != len(config.feature_maps):
        raise ValueError(f"anchor config has {len(maps) if isinstance(maps, list) else 'no'} feature "
                         f"maps, preset {config.name} has {len(config.feature_maps)}")
    if anchor_config.get("image_size", config.image_size) != config.image_size:
        raise ValueError(f"anchor config is for {anchor_config['image_size']} px input, preset "
                         f"{config.name} takes {config.image_size}")
    replaced = []
    for index, (fm, new) in enumerate(zip(config.feature_maps, maps)):
        try:
            min_size, max_size = float(new["min_size"]), float(new["max_size"])
            ratios = tuple(float(r) for r in new["aspect_ratios"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"anchor config feature map {index}: missing or non-numeric {e}") from None
        for key in ("source", "size", "step"):
            if key in new and new[key] != getattr(fm, key):
                raise ValueError(f"anchor config feature map {index}: {key} {new[key]!r}, preset "
                                 f"{config.name} has {getattr(fm, key)!r}")
        if len(ratios) != len(fm.aspect_ratios):
            raise ValueError(f"anchor config feature map {index} ({fm.source}): {len(ratios)} aspect "
                             f"ratios, preset {config.name} has {len(fm.aspect_ratios)} (boxes per cell "
                             f"would change)")
        if not (0 < min_size < max_size) or any(r < 1.0 for r in ratios):
            raise ValueError(f"anchor config feature map {index} ({fm.source}): need 0 < min_size < "
                             f"max_size and aspect ratios >= 1, got {min_size}, {max_size}, {ratios}")
        replaced.append(dataclasses.replace(fm, min_size=min_size, max_size=max_size, aspect_ratios=ratios))
    return dataclasses.replace(config, feature_maps=tuple(replaced))
