"""torchvision's SSDLite320-MobileNetV3-Large weights -> the ssdlite320_mobilenet_v3_large preset.

Two files, one name table (nets.weight_table rows, read by nets.torch_weights.read_weights):

* the whole detector, `ssdlite320_mobilenet_v3_large_coco-a79551df.pth` (or any state dict of
  torchvision's `ssdlite320_mobilenet_v3_large(num_classes=...)` with the reduced tail): every weight,
  91 logits (background + COCO's 90 category ids) for the COCO file (`detector_table`);
* the ImageNet MobileNetV3-Large, `mobilenet_v3_large-8738ca79.pth` / `-5c1a4163.pth` (full tail,
  `features.<i>...`; the classifier is not used) into a `reduced_tail=False` model's backbone
  (`imagenet_backbone_table`).

torchvision's module paths (nets/mobilenet_v3.py names its layers after the plain MobileNetV3's
`features.<i>`): the detector splits that Sequential at C4 (SSDLiteFeatureExtractorMobileNet):
`backbone.features.0.<i>` holds features[0..12] and, as `.13`, block 13's expansion (block[0]);
`backbone.features.1.0` holds block 13's block[1:] (depthwise `.1`, SE `.2`, projection `.3`: a sliced
Sequential keeps its keys), `.1`, `.2` blocks 14
and 15, `.3` features[16]. Extras are `backbone.extra.<e>.<0|1|2>`, heads
`head.<classification|regression>_head.module_list.<m>.0` (depthwise conv + BN) and `.1` (1x1 conv).

Layouts: conv [O, I, kh, kw] -> Keras [kh, kw, I, O]; depthwise [C, 1, kh, kw] -> Keras [kh, kw, C, 1];
the box head's outputs are per box (dx, dy, dw, dh) in torchvision (_utils.BoxCoder, weights 10, 10, 5,
5 = our variances 0.1, 0.2) and (ty, tx, th, tw) here (DESIGN.md), so its 1x1 kernel and bias columns
are permuted by BOX_CODE_ORDER within each box.
"""

import numpy as np

from nets import mobilenet_v3, torch_weights
from nets.weight_table import BIAS, KERNEL, Entry, assign, identity, oihw_to_hwio

# Our code k is torchvision's code BOX_CODE_ORDER[k]: ty <- dy, tx <- dx, th <- dh, tw <- dw.
BOX_CODE_ORDER = (1, 0, 3, 2)
_BATCH_NORM = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
               ("running_var", "moving_variance"))
# The extra blocks' torchvision indices and our layer suffixes: 1x1, depthwise 3x3, 1x1.
_EXTRA_PARTS = ((0, "_1"), (1, "_2"), (2, "_3"))
DETECTOR_KEY = "backbone.features.0.0.0.weight"     # present in a whole-detector file
IMAGENET_KEY = "features.0.0.weight"                # present in an ImageNet MobileNetV3 file


def depthwise_oihw_to_hwcm(kernel):
    """torch depthwise weight [C, 1, kh, kw] -> Keras DepthwiseConv2D kernel [kh, kw, C, 1]."""
    return np.transpose(kernel, (2, 3, 0, 1))


def _box_columns(values):
    """[..., boxes * 4] in torchvision's (dx, dy, dw, dh) per box -> ours (ty, tx, th, tw)."""
    grouped = values.reshape(values.shape[:-1] + (-1, 4))
    return grouped[..., list(BOX_CODE_ORDER)].reshape(values.shape)


def _box_kernel(kernel):
    return _box_columns(oihw_to_hwio(kernel))


def _conv_bn(source, layer, depthwise=False):
    """Rows of a torchvision Conv2dNormActivation (`<source>.0` conv, `<source>.1` BN) -> layer, layer_bn."""
    rows = [Entry(f"{source}.0.weight", layer, KERNEL, depthwise_oihw_to_hwcm if depthwise else oihw_to_hwio)]
    rows += [Entry(f"{source}.1.{t}", f"{layer}_bn", k, identity) for t, k in _BATCH_NORM]
    return rows


def _block_parts(setting):
    """[(kind, our layer suffix)] of an InvertedResidual's `block` Sequential, in torchvision's order."""
    inp, _, expanded, _, se, _, _ = setting
    parts = [("conv", "_expand")] if expanded != inp else []
    parts.append(("depthwise", "_dw"))
    if se:
        parts.append(("se", "_se"))
    parts.append(("conv", "_project"))
    return parts


def _part_rows(kind, source, layer):
    if kind == "se":
        return [Entry(f"{source}.fc{n}.{t}", f"{layer}_fc{n}", k, convert)
                for n in (1, 2) for t, k, convert in (("weight", KERNEL, oihw_to_hwio), ("bias", BIAS, identity))]
    return _conv_bn(source, layer, depthwise=kind == "depthwise")


def backbone_rows(reduced_tail, module_path):
    """Rows of the MobileNetV3-Large features: module_path(i, j) is the torch path of features[i]'s
    block[j] (j None for features[0] and the last conv), the layout of the file being read."""
    settings = mobilenet_v3.block_settings(1.0, reduced_tail)
    rows = _conv_bn(module_path(0, None), "features_0_conv")
    for index, setting in enumerate(settings, start=1):
        for j, (kind, suffix) in enumerate(_block_parts(setting)):
            rows += _part_rows(kind, module_path(index, j), f"features_{index}{suffix}")
    last = len(settings) + 1
    return rows + _conv_bn(module_path(last, None), f"features_{last}_conv")


def _detector_path(index, j):
    """torch path of features[index].block[j] inside SSDLiteFeatureExtractorMobileNet (module doc)."""
    c4 = mobilenet_v3.C4_BLOCK
    if index < c4:
        return "backbone.features.0.0" if index == 0 else f"backbone.features.0.{index}.block.{j}"
    if index == c4:
        # block[1:] of an nn.Sequential keeps the original keys: the depthwise conv stays "1".
        return f"backbone.features.0.{c4}" if j == 0 else f"backbone.features.1.0.{j}"
    if j is None:                       # features[16], the last conv
        return f"backbone.features.1.{index - c4}"
    return f"backbone.features.1.{index - c4}.block.{j}"


def _imagenet_path(index, j):
    return f"features.{index}" if j is None else f"features.{index}.block.{j}"


def detector_table(config):
    """Every weight of a `config` (ssdlite320_mobilenet_v3_large, width 1) model from a torchvision
    detector state dict: backbone, extras, and both heads per feature map."""
    rows = backbone_rows(config.reduced_tail, _detector_path)
    for e, spec in enumerate(config.extra_layers):
        for part, suffix in _EXTRA_PARTS:
            rows += _conv_bn(f"backbone.extra.{e}.{part}", spec.name + suffix, depthwise=part == 1)
    for m, spec in enumerate(config.feature_maps):
        for head, suffix, kernel_convert, bias_convert in (
                ("classification_head", "_mbox_conf", oihw_to_hwio, identity),
                ("regression_head", "_mbox_loc", _box_kernel, _box_columns)):
            source = f"head.{head}.module_list.{m}"
            layer = spec.source + suffix
            rows += _conv_bn(f"{source}.0", f"{layer}_dw", depthwise=True)
            rows += [Entry(f"{source}.1.weight", layer, KERNEL, kernel_convert),
                     Entry(f"{source}.1.bias", layer, BIAS, bias_convert)]
    return rows


def imagenet_backbone_table():
    """The full-tail MobileNetV3-Large backbone (features[0..16]) from torchvision's ImageNet file."""
    return backbone_rows(False, _imagenet_path)


def load_state(model, config, weights, source_description):
    """Assigns a torchvision state dict {name: np.ndarray} into `model`; returns the count assigned.

    A whole detector (it has DETECTOR_KEY) loads everything; an ImageNet MobileNetV3-Large (IMAGENET_KEY)
    loads the backbone only, into a `reduced_tail=False` model. Raises ValueError naming every row that
    is missing or mismatched (e.g. a reduced-tail file into a full-tail model, or another class count).
    """
    if DETECTOR_KEY in weights:
        return assign(model, weights, detector_table(config), source_description, what="detector")
    if IMAGENET_KEY in weights:
        if config.reduced_tail:
            raise ValueError(f"{source_description} is the full-tail ImageNet MobileNetV3-Large; the model "
                             "has the reduced tail (build it with reduced_tail=False)")
        return assign(model, weights, imagenet_backbone_table(), source_description)
    raise ValueError(f"{source_description}: neither a torchvision SSDLite detector ({DETECTOR_KEY}) nor an "
                     f"ImageNet MobileNetV3-Large ({IMAGENET_KEY})")


def load_imagenet_backbone(model, path):
    """The --checkpoint_path route (nets/backbone_loader.load_backbone for a MobileNetV3 model): torchvision's
    ImageNet MobileNetV3-Large file into a full-tail model's backbone; returns the count assigned."""
    weights = torch_weights.read_weights(path)
    if IMAGENET_KEY not in weights:
        raise ValueError(f"{path}: not torchvision's ImageNet MobileNetV3-Large ({IMAGENET_KEY} missing)"
                         + ("; a whole SSDLite detector loads with --fine_tune_checkpoint" if DETECTOR_KEY in weights
                            else ""))
    return assign(model, weights, imagenet_backbone_table(), path)


def load(model, config, path):
    """Reads `path` (.pth, .pt or .safetensors) with nets.torch_weights and loads it (load_state)."""
    return load_state(model, config, torch_weights.read_weights(path), path)
