"""Loads pretrained VGG16 weights into the backbone of a built SSD model (nets.ssd.build).

Two file kinds, detected by `load_backbone`:

* A TF checkpoint of the reduced-fc VGG16 with TF-slim names (`vgg_16/conv1/conv1_1/weights`, …,
  `vgg_16/fc6/weights` [3,3,512,1024], `vgg_16/fc7/weights` [1,1,1024,1024]), copied as is.
* A Keras-applications VGG16 HDF5 weights file with the classifier
  (`vgg16_weights_tf_dim_ordering_tf_kernels.h5`: block1_conv1 … block5_conv3, fc1 [25088,4096],
  fc2 [4096,4096]), whose fc layers are converted to the reduced fc6/fc7 the way SSD's Caffe model was
  made (paper §3, from DeepLab-LargeFOV): fc1 viewed as a 7x7x512 conv is subsampled to every third
  row/column (0, 3, 6) and every fourth filter -> [3,3,512,1024], then run with dilation 6 to keep the
  receptive field; fc2 keeps every fourth input and output -> [1,1,1024,1024]; biases likewise.

Both kinds were trained on BGR input (Caffe-derived weights; Keras's 'caffe' preprocessing), while our
pipeline feeds RGB (DESIGN.md), so conv1_1's input-channel axis is reversed at load (`bgr_checkpoint`).

PyTorch `.pth` / `.pt` and `.safetensors` files go to `nets.torch_weights` (torchvision's ResNet34,
ssd.pytorch's `vgg16_reducedfc.pth`).

Every table entry must be found with a compatible shape, or a ValueError lists every one that is not.
"""

import dataclasses
import glob
import os
from typing import Callable, Dict

import numpy as np
import tensorflow as tf
from absl import logging

from nets import vgg16

DEFAULT_CHECKPOINT_DIR = "model/pretrained"

KERNEL, BIAS = "kernel", "bias"
_H5_SUFFIXES = (".h5", ".hdf5")
_TORCH_SUFFIXES = (".pth", ".pt", ".safetensors")   # nets.torch_weights (ResNet34 and ssd.pytorch VGG16)

# fc1 -> fc6 subsampling (DeepLab-LargeFOV / SSD): 7x7 window, every 3rd tap, every 4th filter.
FC1_WINDOW = 7
FC6_TAP_STRIDE = 3
FC_FILTER_STRIDE = 4


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One file variable -> one weight of one model layer, with the conversion between layouts."""

    source: str                                 # name in the file
    layer: str                                  # model layer name (nets.vgg16 / DESIGN.md)
    kind: str                                   # KERNEL or BIAS
    convert: Callable[[np.ndarray], np.ndarray]


def _identity(value):
    return value


def _reverse_input_channels(kernel):
    """[kh, kw, 3, filters] BGR-input kernel -> the same kernel for RGB input."""
    return kernel[:, :, ::-1, :]


def _fc1_to_fc6_kernel(kernel):
    """[7*7*c, 4f] (row-major over 7, 7, c) -> [3, 3, c, f] atrous fc6 kernel."""
    window = kernel.reshape(FC1_WINDOW, FC1_WINDOW, -1, kernel.shape[-1])          # [7, 7, c, 4f]
    return window[::FC6_TAP_STRIDE, ::FC6_TAP_STRIDE, :, ::FC_FILTER_STRIDE]       # [3, 3, c, f]


def _fc2_to_fc7_kernel(kernel):
    """[4f, 4f] -> [1, 1, f, f]: fc6 kept every 4th filter, so fc7 keeps every 4th input too."""
    return kernel[::FC_FILTER_STRIDE, ::FC_FILTER_STRIDE][None, None]              # [1, 1, f, f]


def _every_fourth(bias):
    return bias[::FC_FILTER_STRIDE]


def _vgg_conv_names():
    """(block number, index in block, model layer name) of the 13 VGG16 convs."""
    return [(block + 1, index + 1, name)
            for block, convs in enumerate(vgg16.VGG16_CONV_BLOCKS)
            for index, (name, _) in enumerate(convs)]


def slim_checkpoint_table(bgr_checkpoint=True):
    """Entries for a reduced-fc TF-slim checkpoint: `vgg_16/conv1/conv1_1/weights` -> conv1_1 kernel, …"""
    entries = []
    for block, index, layer in _vgg_conv_names():
        scope = f"vgg_16/conv{block}/conv{block}_{index}"
        first = bgr_checkpoint and layer == "conv1_1"
        entries.append(_Entry(f"{scope}/weights", layer, KERNEL, _reverse_input_channels if first else _identity))
        entries.append(_Entry(f"{scope}/biases", layer, BIAS, _identity))
    for layer in (vgg16.FC6, vgg16.FC7):
        entries.append(_Entry(f"vgg_16/{layer}/weights", layer, KERNEL, _identity))
        entries.append(_Entry(f"vgg_16/{layer}/biases", layer, BIAS, _identity))
    return entries


def keras_h5_table(bgr_checkpoint=True):
    """Entries for Keras's full VGG16 h5 file: `block1_conv1/kernel` -> conv1_1 kernel, fc1 -> fc6, …"""
    entries = []
    for block, index, layer in _vgg_conv_names():
        source = f"block{block}_conv{index}"
        first = bgr_checkpoint and layer == "conv1_1"
        entries.append(_Entry(f"{source}/{KERNEL}", layer, KERNEL, _reverse_input_channels if first else _identity))
        entries.append(_Entry(f"{source}/{BIAS}", layer, BIAS, _identity))
    entries += [
        _Entry(f"fc1/{KERNEL}", vgg16.FC6, KERNEL, _fc1_to_fc6_kernel),
        _Entry(f"fc1/{BIAS}", vgg16.FC6, BIAS, _every_fourth),
        _Entry(f"fc2/{KERNEL}", vgg16.FC7, KERNEL, _fc2_to_fc7_kernel),
        _Entry(f"fc2/{BIAS}", vgg16.FC7, BIAS, _every_fourth),
    ]
    return entries


def read_keras_h5(path) -> Dict[str, np.ndarray]:
    """{"<layer>/kernel" | "<layer>/bias": array} from a Keras HDF5 weights file.

    The Keras layout (keras legacy_h5_format): the root (or its `model_weights` group, in a whole-model
    file) lists `layer_names`; each layer group lists its `weight_names` in creation order, kernel then
    bias for Dense/Conv2D; the names themselves vary across Keras versions (`block1_conv1_W_1:0`,
    `block1_conv1/kernel:0`), so only the order is relied on.
    """
    import h5py  # installed with TensorFlow; imported here so checkpoint-only users never need it

    weights = {}
    with h5py.File(path, "r") as h5:
        root = h5["model_weights"] if "model_weights" in h5 else h5
        for layer in _decoded(root.attrs.get("layer_names", [])):
            names = _decoded(root[layer].attrs.get("weight_names", []))
            for kind, weight_name in zip((KERNEL, BIAS), names):
                weights[f"{layer}/{kind}"] = np.asarray(root[layer][weight_name])
    return weights


def _decoded(names):
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def read_tf_checkpoint(path, names) -> Dict[str, np.ndarray]:
    """{name: array} for each of `names` present in the TF checkpoint at prefix `path`.

    Only the named variables are read: a full slim vgg_16 checkpoint also holds a 400 MB fc6.
    """
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in names if reader.has_tensor(name)}


def assign_backbone(model, variables, table, source_description):
    """Assigns every table entry from `variables` into `model`; returns how many were assigned.

    Raises ValueError listing every entry that is missing from `variables`, cannot be converted, or
    does not match its layer's weight shape (e.g. a width_multiplier != 1 model); nothing is assigned
    then.
    """
    problems, assignments = [], []
    for entry in table:
        target = getattr(model.get_layer(entry.layer), entry.kind)
        if entry.source not in variables:
            problems.append(f"{entry.source}: not in the file (for {entry.layer} {entry.kind} {tuple(target.shape)})")
            continue
        value = variables[entry.source]
        try:
            converted = entry.convert(value)
        except (ValueError, IndexError) as error:   # reshape or slicing of a wrong-rank/size array
            problems.append(f"{entry.source}: file shape {value.shape} cannot be converted ({error})")
            continue
        if tuple(converted.shape) != tuple(target.shape):
            problems.append(f"{entry.source}: file shape {value.shape} gives {converted.shape}, "
                            f"but {entry.layer} {entry.kind} is {tuple(target.shape)}")
            continue
        assignments.append((target, converted))
    if problems:
        raise ValueError(f"cannot load the backbone from {source_description}: {len(problems)} of {len(table)} "
                         "variables missing or mismatched:\n  " + "\n  ".join(problems))
    for target, value in assignments:
        target.assign(value.astype(np.float32))
    logging.info("loaded %d of %d backbone variables from %s", len(assignments), len(table), source_description)
    return len(assignments)


def _resolve(path):
    """A directory -> its latest checkpoint, or its single checkpoint prefix or h5 file."""
    if not os.path.isdir(path):
        return path
    latest = tf.train.latest_checkpoint(path)
    if latest:
        return latest
    candidates = [p[: -len(".index")] for p in glob.glob(os.path.join(path, "*.index"))]
    candidates += [p for suffix in _H5_SUFFIXES + _TORCH_SUFFIXES
                   for p in glob.glob(os.path.join(path, "*" + suffix))]
    if len(candidates) != 1:
        raise ValueError(f"{path}: expected one checkpoint (*.index) or weights file (*.h5, *.pth, *.safetensors), "
                         f"found {sorted(candidates) or 'none'}")
    return candidates[0]


def load_backbone(model, path=DEFAULT_CHECKPOINT_DIR, bgr_checkpoint=True) -> int:
    """Loads VGG16 weights from `path` into `model` (built by nets.ssd.build); returns the count loaded.

    `path`: a TF checkpoint prefix, a directory holding one checkpoint or one .h5, or a Keras .h5 file.
    `bgr_checkpoint`: the weights expect BGR input, so conv1_1's input channels are reversed.
    Raises ValueError listing every variable that is missing or of the wrong shape.
    """
    resolved = _resolve(path)
    if resolved.endswith(_TORCH_SUFFIXES):   # PyTorch / safetensors files: nets.torch_weights
        from nets import torch_weights
        return torch_weights.load(model, resolved, bgr_checkpoint)
    if resolved.endswith(_H5_SUFFIXES):
        return assign_backbone(model, read_keras_h5(resolved), keras_h5_table(bgr_checkpoint), resolved)
    table = slim_checkpoint_table(bgr_checkpoint)
    return assign_backbone(model, read_tf_checkpoint(resolved, [e.source for e in table]), table, resolved)
