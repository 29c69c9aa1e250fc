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
    variances: Tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    match_threshold: float = 0.5                  # anchor/gt IoU for a positive (paper §2.2)
    negative_ratio: float = 3.0                   # hard negatives per positive (paper §2.2)
    score_threshold: float = 0.01                 # post-processing (ssd_pascal.py, test phase)
    nms_iou_threshold: float = 0.45
    max_detections_per_class: int = 400
    max_detections: int = 200
    # Anchor <-> box matching rule, model/matcher.py: "caffe_bipartite" (Caffe MatchBBox) or
    # "ssd_pytorch" (ssd.pytorch's match, for comparison).
    matching: str = "caffe_bipartite"
    # Caffe's PriorBoxLayer reads min/max sizes into an `int` (SSD512's 35.84 px acts as 35); the VGG
    # presets set True so Caffe-trained weights see their own anchors. False keeps the sizes as given.
    integer_prior_sizes: bool = False

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

_PRESETS = {"ssd300_vgg16": _SSD300, "ssd512_vgg16": _SSD512}

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
    for key in ("pixel_mean", "variances"):
        values[key] = tuple(values[key])
    return SSDConfig(**values)
