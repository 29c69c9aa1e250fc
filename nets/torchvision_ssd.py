"""torchvision's SSD300-VGG16 detector (`ssd300_vgg16_coco-b556d3b4.pth`, COCO AP 25.1) -> our SSD300.

The architecture is ours (torchvision/models/detection/ssd.py SSDFeatureExtractorVGG): VGG16 through
conv4_3 with pool3 in ceil mode (75 -> 38, as our 'same' pooling), the conv4_3 L2 norm with a learned
per-channel scale, pool5 3x3/1, fc6 dilated 6, fc7, four extra blocks, 3x3 heads. What differs, and
what `table` converts (the 71 state-dict tensors, 35,641,826 parameters):

* names: `backbone.features.N` (conv1_1 ... conv4_3, N the index in VGG's `features`),
  `backbone.scale_weight` (conv4_3_norm's gamma), `backbone.extra.0.{1,3,5}` (conv5_x),
  `backbone.extra.0.7.{1,3}` (fc6, fc7), `backbone.extra.{1..4}.{0,2}` (conv6_1/_2 ... conv9_1/_2),
  `head.classification_head.module_list.K`, `head.regression_head.module_list.K` (K = feature map);
* torch conv weights are [out, in, kh, kw] (nets.weight_table.oihw_to_hwio); the input is RGB, as ours;
* the class head has 91 columns per box, torchvision's COCO category ids (COCO_91_CLASSES: background,
  80 classes and ten unused "N/A" ids, all inside its softmax); `table` gathers the run's columns by
  class name (engine/fine_tune.py matches the names) and keeps the model's own initial values for
  classes COCO does not have;
* box codes are (dx, dy, dw, dh) with BoxCoder weights (10, 10, 5, 5), ours [ty, tx, th, tw] with
  variances (0.1, 0.1, 0.2, 0.2): the same numbers in another order, so each box's four output
  channels are permuted (BOX_CODE_ORDER); torchvision's decode also clamps dw, dh at log(1000/16), as
  model.box_coder does.

Both heads lay their channels out as box-major then column (torchvision SSDScoringHead views
[N, boxes * K, H, W] as [N, boxes, K, H, W]; ours reshapes [B, H, W, boxes * K] row-major), so a
head's kernel is reshaped [boxes, K, ...], gathered or permuted along K, and reshaped back.

The rest of torchvision's model is configuration, in the `ssd300_vgg16_torchvision` preset
(model/presets.py): its mean, its size-only anchor clip and its clip before NMS.
"""

import numpy as np

from nets import ssd, vgg16
from nets.weight_table import BIAS, KERNEL, Entry, identity, oihw_to_hwio

# torchvision.models._meta._COCO_CATEGORIES: column k of the class head is COCO category id k.
NA = "N/A"
COCO_91_CLASSES = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", NA, "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", NA, "backpack", "umbrella",
    NA, NA, "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", NA,
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    NA, "dining table", NA, NA, "toilet", NA, "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", NA, "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)
NUM_COLUMNS = len(COCO_91_CLASSES)          # 91
NUM_TENSORS = 71
NUM_PARAMETERS = 35_641_826

# Our [ty, tx, th, tw] channel i is torchvision's channel BOX_CODE_ORDER[i] of (dx, dy, dw, dh).
BOX_CODE_ORDER = (1, 0, 3, 2)

# Index of each conv in VGG's `features` (ReLUs and pools take the others), conv1_1 ... conv4_3.
FEATURES_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)
# conv5_1 ... conv5_3 inside backbone.extra.0 (after pool4 at 0), then fc6 and fc7 inside its `fc` (7).
EXTRA0_NAMES = {"conv5_1": "backbone.extra.0.1", "conv5_2": "backbone.extra.0.3",
                "conv5_3": "backbone.extra.0.5", vgg16.FC6: "backbone.extra.0.7.1",
                vgg16.FC7: "backbone.extra.0.7.3"}
SCALE_WEIGHT = "backbone.scale_weight"
CLASS_HEAD = "head.classification_head.module_list.{}"
BOX_HEAD = "head.regression_head.module_list.{}"

# What the file's architecture is, in our config's terms (checked by `check_config`).
IMAGE_SIZE = 300
SOURCES = ("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2")
BOXES_PER_LOCATION = (4, 6, 6, 6, 4, 4)


def is_torchvision_ssd(weights):
    """Whether a {name: array} state dict is a torchvision SSD-VGG16 (by its conv4_3 scale and heads)."""
    return SCALE_WEIGHT in weights and CLASS_HEAD.format(0) + ".weight" in weights


def check_config(config):
    """Raises ValueError in one line naming what in `config` differs from torchvision's SSD300-VGG16."""
    differences = []
    if config.backbone != "vgg16":
        differences.append(f"backbone {config.backbone} (the file is VGG16)")
    if config.width_multiplier != 1.0:
        differences.append(f"width_multiplier {config.width_multiplier:g} (the file is full width, 1)")
    if config.image_size != IMAGE_SIZE:
        differences.append(f"image size {config.image_size} (the file is SSD300)")
    if config.extra_batch_norm:
        differences.append("batch norm in the extra layers (the file has none)")
    sources = tuple(fm.source for fm in config.feature_maps)
    if not differences and sources != SOURCES:
        differences.append(f"feature maps {', '.join(sources)} (the file's: {', '.join(SOURCES)})")
    if not differences and config.boxes_per_location != BOXES_PER_LOCATION:
        differences.append(f"boxes per location {config.boxes_per_location} (the file's: {BOXES_PER_LOCATION})")
    if differences:
        raise ValueError(f"model {config.name} is not torchvision's SSD300-VGG16: " + "; ".join(differences))


def _name_pairs(config):
    """(torch name prefix, our layer) of every conv, heads excluded."""
    convs = [name for block in vgg16.VGG16_CONV_BLOCKS for name, _ in block]
    pairs = [(f"backbone.features.{i}", layer) for i, layer in zip(FEATURES_INDICES, convs[:10])]
    pairs += [(EXTRA0_NAMES[layer], layer) for layer in convs[10:] + [vgg16.FC6, vgg16.FC7]]
    for block, spec in enumerate(config.extra_layers, start=1):
        pairs += [(f"backbone.extra.{block}.0", f"{spec.name}_1"), (f"backbone.extra.{block}.2", f"{spec.name}_2")]
    return pairs


def _per_box(convert_columns, boxes, columns):
    """A converter of a head weight: [boxes * columns, ...] -> [boxes, columns, ...] -> convert_columns
    -> [boxes * new columns, ...] -> Keras layout (kernels [3, 3, in, out], biases [out])."""
    def convert(value):
        split = value.reshape((boxes, columns) + value.shape[1:])           # [boxes, K, (in, kh, kw)]
        converted = convert_columns(split)                                  # [boxes, K', (in, kh, kw)]
        merged = converted.reshape((-1,) + value.shape[1:])                 # [boxes * K', (in, kh, kw)]
        return oihw_to_hwio(merged) if merged.ndim == 4 else merged
    return convert


def _gather_columns(class_columns, initial):
    """Columns of the run's class head: file column class_columns[j], or (None) column j of `initial`,
    the model's own freshly initialised weight converted back to [boxes, C + 1, ...]."""
    def gather(split):                                                       # [boxes, 91, ...]
        columns = [split[:, source] if source is not None else initial[:, j]
                   for j, source in enumerate(class_columns)]
        return np.stack(columns, axis=1)                                     # [boxes, C + 1, ...]
    return gather


def _to_torch_layout(keras_value, boxes):
    """A Keras head weight back to [boxes, K, ...] in torch order (for the columns kept from init)."""
    if keras_value.ndim == 4:                                                # [kh, kw, in, boxes * K]
        keras_value = np.transpose(keras_value, (3, 2, 0, 1))                # [boxes * K, in, kh, kw]
    return keras_value.reshape((boxes, -1) + keras_value.shape[1:])


def table(model, config, class_columns):
    """Weight-table rows (nets.weight_table.Entry) loading a torchvision SSD300-VGG16 state dict into
    `model`, built from `config` (checked first: ValueError naming the difference).

    class_columns: [C + 1], for each of the run's class columns (0 = background) the torchvision column
    (0..90) to take, or None to keep the model's initial values (a class COCO does not have).
    """
    check_config(config)
    if len(class_columns) != config.num_classes + 1 or class_columns[0] != 0:
        raise ValueError(f"class_columns must give {config.num_classes + 1} columns, background (0) first")
    entries = []
    for prefix, layer in _name_pairs(config):
        entries.append(Entry(f"{prefix}.weight", layer, KERNEL, oihw_to_hwio))
        entries.append(Entry(f"{prefix}.bias", layer, BIAS, identity))
    entries.append(Entry(SCALE_WEIGHT, vgg16.CONV4_3_NORM, "gamma", identity))
    for k, fm in enumerate(config.feature_maps):
        boxes = fm.boxes_per_location
        conf = model.get_layer(fm.source + ssd.CONF_SUFFIX)
        for kind, suffix in ((KERNEL, ".weight"), (BIAS, ".bias")):
            initial = _to_torch_layout(getattr(conf, kind).numpy(), boxes)
            gather = _per_box(_gather_columns(class_columns, initial), boxes, NUM_COLUMNS)
            entries.append(Entry(CLASS_HEAD.format(k) + suffix, conf.name, kind, gather))
            permute = _per_box(lambda split: split[:, list(BOX_CODE_ORDER)], boxes, ssd.BOX_CODE_SIZE)
            entries.append(Entry(BOX_HEAD.format(k) + suffix, fm.source + ssd.LOC_SUFFIX, kind, permute))
    return entries
