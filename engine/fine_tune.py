"""Starting a run from a whole trained detector: `train_ssd.py --fine_tune_checkpoint PATH` (`load`).

Like TF Object Detection API's `fine_tune_checkpoint_type: "detection"`, torchvision's `weights=` and
mmdetection's `load_from`: every weight of the network is loaded, then training starts at step 0
with a fresh optimizer and the usual schedule. Two kinds of PATH:

* this project's model_dir (its latest checkpoint) or one `ckpt-N` prefix in it, trained on any class
  set, with the same architecture (backbone, width, input size, extra layers, feature maps and boxes
  per location; anchor sizes may differ). Its config.json and label map say what it is.
* torchvision's SSD300-VGG16 state dict (`ssd300_vgg16_coco-b556d3b4.pth`), read without torch by
  nets.torch_weights and converted by nets.torchvision_ssd (names, 91 COCO columns, box-code order).
  Use it with `--model ssd300_vgg16_torchvision`, whose input mean, anchor clip and NMS clip are
  torchvision's; another SSD300-VGG16 preset loads too (with a warning: the inputs then differ).

The class head keeps the column of every class found in both label maps, matched by name ignoring
case, with the VOC <-> COCO spellings of the same class taken as one (CLASS_ALIASES), and the
background column; the columns of the other classes keep their fresh initialisation. The box head,
whose outputs do not depend on the class, is loaded whole. A file of another architecture or width is
refused with one line naming what differs.
"""

import os

import numpy as np
import tensorflow as tf
from absl import logging

from engine import checkpoints
from model import presets
from nets import ssd, torch_weights, torchvision_ssd
from nets.weight_table import TORCH_WEIGHTS_SUFFIXES, assign

# VOC's spelling -> COCO's, for the six classes the two sets share under different names.
CLASS_ALIASES = {"aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "tvmonitor": "tv",
                 "diningtable": "dining table", "pottedplant": "potted plant"}


def _canonical(name):
    name = name.strip().lower()
    return CLASS_ALIASES.get(name, name)


def class_columns(source_names, target_names, skip=()):
    """[C + 1] source column for each target column (0: background -> 0; None: not in the source).

    source_names: the classes of the source's columns 1..; target_names: the run's classes 1..C;
    skip: source names never matched (torchvision's "N/A" columns).
    """
    columns = {}
    for column, name in enumerate(source_names, start=1):
        if name not in skip:
            columns.setdefault(_canonical(name), column)
    return [0] + [columns.get(_canonical(name)) for name in target_names]


def _carried_line(path, target_names, columns, loaded):
    carried = [name for name, column in zip(target_names, columns[1:]) if column is not None]
    new = [name for name, column in zip(target_names, columns[1:]) if column is None]
    return (f"fine-tuning from {path}: {loaded} weights loaded; classes carried over: "
            f"{len(carried)} of {len(target_names)} ({', '.join(carried) or 'none'})"
            + (f"; new, initialised: {', '.join(new)}" if new else ""))


def load(model, config, class_names, path):
    """Loads the detector at `path` into `model` (built from `config` for `class_names`); returns the
    closing log line (also logged). ValueError / FileNotFoundError in one line for a file that does
    not fit."""
    if str(path).endswith(TORCH_WEIGHTS_SUFFIXES):
        line = load_torchvision(model, config, class_names, path)
    else:
        line = load_checkpoint(model, config, class_names, path)
    logging.info("%s", line)
    return line


def load_torchvision(model, config, class_names, path):
    """Loads torchvision's SSD300-VGG16 state dict `path` into `model` (nets/torchvision_ssd.py)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--fine_tune_checkpoint {path}: no such file")
    weights = torch_weights.read_weights(path)
    if not torchvision_ssd.is_torchvision_ssd(weights):
        raise ValueError(f"{path} is not a torchvision SSD300-VGG16 state dict (no {torchvision_ssd.SCALE_WEIGHT} "
                         f"and class head): give torchvision's ssd300_vgg16_coco-*.pth or a model_dir")
    try:
        torchvision_ssd.check_config(config)
    except ValueError as error:
        raise ValueError(f"{path}: {error}; use --model ssd300_vgg16_torchvision") from None
    preset = presets.get("ssd300_vgg16_torchvision", config.num_classes)
    if config.pixel_mean != preset.pixel_mean or config.anchor_clip != preset.anchor_clip:
        logging.warning("%s was trained with torchvision's input mean and anchors; --model %s differs "
                        "(use --model ssd300_vgg16_torchvision to keep them)", path, config.name)
    columns = class_columns(torchvision_ssd.COCO_91_CLASSES[1:], class_names, skip=(torchvision_ssd.NA,))
    table = torchvision_ssd.table(model, config, columns)
    unmatched = sorted(set(weights) - {entry.source for entry in table})
    if unmatched:
        raise ValueError(f"{path}: {len(unmatched)} tensors match no layer of SSD300-VGG16 "
                         f"(e.g. {unmatched[0]}): not torchvision's SSD300")
    head_columns = weights[torchvision_ssd.CLASS_HEAD.format(0) + ".bias"].size // config.boxes_per_location[0]
    if head_columns != torchvision_ssd.NUM_COLUMNS:
        raise ValueError(f"{path}: its class head has {head_columns} columns per box, not torchvision's COCO "
                         f"{torchvision_ssd.NUM_COLUMNS}: the class names of its columns are unknown")
    loaded = assign(model, weights, table, path, what="detector")
    return _carried_line(path, class_names, columns, loaded)


# MobileNetV3 fields that a run fine-tuned from this project's model_dir takes from its config.json
# (train_ssd.py), since no flag sets them: the tail shapes the weights, the padding is how they were trained.
SOURCE_BACKBONE_FIELDS = ("reduced_tail", "backbone_padding")


def source_backbone_fields(path):
    """{field: value} of SOURCE_BACKBONE_FIELDS in the config.json of the model_dir or ckpt-N `path`;
    {} for a weights file (its loader says what it needs)."""
    if str(path).endswith(TORCH_WEIGHTS_SUFFIXES):
        return {}
    source_config, _ = checkpoints.read(path)
    return {field: getattr(source_config, field) for field in SOURCE_BACKBONE_FIELDS}


def _architecture(config):
    """What shapes the weights, or how they compute (anchor sizes, thresholds and the like do not)."""
    return {"backbone": config.backbone, "width_multiplier": config.width_multiplier,
            "reduced_tail": config.reduced_tail, "backbone_padding": config.backbone_padding,
            "image_size": config.image_size, "extra_batch_norm": config.extra_batch_norm,
            "extra layers": tuple((e.name, e.mid_channels, e.out_channels, e.kernel_size, e.stride)
                                  for e in config.extra_layers),
            "feature maps": tuple((fm.source, fm.size) for fm in config.feature_maps),
            "boxes per location": config.boxes_per_location}


def load_checkpoint(model, config, class_names, path):
    """Loads a model_dir's latest checkpoint, or the `ckpt-N` prefix `path`, into `model`."""
    if os.path.isdir(path):
        checkpoint = tf.train.latest_checkpoint(path)
        if not checkpoint:
            raise FileNotFoundError(f"--fine_tune_checkpoint {path}: no checkpoint in that folder (a model_dir "
                                    f"of train_ssd.py holds ckpt-N files)")
    elif os.path.exists(path + ".index"):
        checkpoint = path
    else:
        raise FileNotFoundError(f"--fine_tune_checkpoint {path}: neither a model_dir, a ckpt-N prefix nor a "
                                f"{'/'.join(TORCH_WEIGHTS_SUFFIXES)} file")
    source_config, source_names = checkpoints.read(path)
    ours, theirs = _architecture(config), _architecture(source_config)
    differences = [f"{key} {theirs[key]} (this run: {ours[key]})" for key in ours if ours[key] != theirs[key]]
    if differences:
        raise ValueError(f"{checkpoint} is a {source_config.name} of another architecture: "
                         + "; ".join(differences))
    source = ssd.build(source_config)
    checkpoints.restore_model(source, checkpoint)
    columns = class_columns(source_names, class_names)
    loaded = 0
    for layer in model.layers:
        values = layer.get_weights()
        if not values:
            continue
        source_values = source.get_layer(layer.name).get_weights()
        if layer.name.endswith(ssd.CONF_SUFFIX):
            boxes = config.boxes_per_location[[fm.source + ssd.CONF_SUFFIX for fm in config.feature_maps]
                                              .index(layer.name)]
            source_values = [_gather(s, v, boxes, columns) for s, v in zip(source_values, values)]
        layer.set_weights(source_values)
        loaded += len(values)
    return _carried_line(checkpoint, class_names, columns, loaded)


def _gather(source, initial, boxes, columns):
    """A Keras class-head weight (kernel [3, 3, in, boxes * K] or bias [boxes * K]) with the run's
    columns: source column columns[j], or column j of `initial` where None."""
    split_source = source.reshape(source.shape[:-1] + (boxes, -1))          # [..., boxes, K_source]
    split_initial = initial.reshape(initial.shape[:-1] + (boxes, -1))       # [..., boxes, C + 1]
    gathered = np.stack([split_source[..., c] if c is not None else split_initial[..., j]
                         for j, c in enumerate(columns)], axis=-1)          # [..., boxes, C + 1]
    return gathered.reshape(initial.shape)
