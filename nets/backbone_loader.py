"""Loads pretrained weights into the backbone of a built SSD model (nets.ssd.build): `load_backbone`.

`load_backbone(model, path)` takes a file, a TF checkpoint prefix, or a folder holding exactly one of
them (model/pretrained/ by default), and loads by the file's kind (suffixes in nets.weight_table):

* A TF checkpoint of the reduced-fc VGG16 with TF-slim names (`vgg_16/conv1/conv1_1/weights`, …,
  `vgg_16/fc6/weights` [3,3,512,1024], `vgg_16/fc7/weights` [1,1,1024,1024]), copied as is: VGG16.
* A Keras-applications VGG16 HDF5 weights file with the classifier
  (`vgg16_weights_tf_dim_ordering_tf_kernels.h5`: block1_conv1 … block5_conv3, fc1 [25088,4096],
  fc2 [4096,4096]), whose fc layers are converted to the reduced fc6/fc7 the way SSD's Caffe model was
  made (paper §3, from DeepLab-LargeFOV): fc1 viewed as a 7x7x512 conv is subsampled to every third
  row/column (0, 3, 6) and every fourth filter -> [3,3,512,1024], then run with dilation 6 to keep the
  receptive field; fc2 keeps every fourth input and output -> [1,1,1024,1024]; biases likewise: VGG16.
* PyTorch `.pth` / `.pt` and `.safetensors` files: handed to `nets.torch_weights.load`, which reads
  torchvision's ResNet34 (`resnet34-333f7ec4.pth`, for ssd300_resnet34) and ssd.pytorch's VGG16
  (`vgg16_reducedfc.pth`, or the `vgg.*` part of a whole ssd.pytorch checkpoint); for a MobileNetV3
  model (the SSDLite presets) to `nets.torchvision_ssdlite.load_imagenet_backbone`, which reads
  torchvision's ImageNet `mobilenet_v3_large-*.pth` into a full-tail backbone.
* For a MobileNetV3 model, a Keras `.h5` / `.weights.h5` file is keras.applications.MobileNetV3Large's
  (`nets.keras_mobilenet_v3.load_file`), and the value `keras:imagenet` (presets.KERAS_IMAGENET) has Keras
  download its ImageNet weights (`nets.keras_mobilenet_v3.load_imagenet`). Both want the full tail and
  Keras's padding: `mobilenet_v3_overrides` names the config fields a backbone source needs.

Both VGG16 files here were trained on BGR input (Caffe-derived weights; Keras's 'caffe' preprocessing),
while our pipeline feeds RGB (DESIGN.md), so conv1_1's input-channel axis is reversed at load
(`bgr_checkpoint`). The two TF-side tables target VGG16 layers only: no loader here fills a ResNet34
backbone from a TF file.

Rows, converters and the all-or-nothing assignment are nets.weight_table's: every table entry must be
found with a compatible shape, or a ValueError lists every one that is not.
"""

import glob
import os
from typing import Dict

import numpy as np
import tensorflow as tf

from model import presets
from nets import keras_mobilenet_v3, mobilenet_v3, torch_weights, torchvision_ssdlite, vgg16
from nets.weight_table import (BIAS, H5_SUFFIXES, KERNEL, TF_CHECKPOINT_INDEX_SUFFIX, TORCH_WEIGHTS_SUFFIXES,
                               WEIGHTS_FILE_SUFFIXES, Entry, assign, identity, reverse_input_channels)

DEFAULT_CHECKPOINT_DIR = "model/pretrained"

# fc1 -> fc6 subsampling (DeepLab-LargeFOV / SSD): 7x7 window, every 3rd tap, every 4th filter.
FC1_WINDOW = 7
FC6_TAP_STRIDE = 3
FC_FILTER_STRIDE = 4


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
        entries.append(Entry(f"{scope}/weights", layer, KERNEL, reverse_input_channels if first else identity))
        entries.append(Entry(f"{scope}/biases", layer, BIAS, identity))
    for layer in (vgg16.FC6, vgg16.FC7):
        entries.append(Entry(f"vgg_16/{layer}/weights", layer, KERNEL, identity))
        entries.append(Entry(f"vgg_16/{layer}/biases", layer, BIAS, identity))
    return entries


def keras_h5_table(bgr_checkpoint=True):
    """Entries for Keras's full VGG16 h5 file: `block1_conv1/kernel` -> conv1_1 kernel, fc1 -> fc6, …"""
    entries = []
    for block, index, layer in _vgg_conv_names():
        source = f"block{block}_conv{index}"
        first = bgr_checkpoint and layer == "conv1_1"
        entries.append(Entry(f"{source}/{KERNEL}", layer, KERNEL, reverse_input_channels if first else identity))
        entries.append(Entry(f"{source}/{BIAS}", layer, BIAS, identity))
    entries += [
        Entry(f"fc1/{KERNEL}", vgg16.FC6, KERNEL, _fc1_to_fc6_kernel),
        Entry(f"fc1/{BIAS}", vgg16.FC6, BIAS, _every_fourth),
        Entry(f"fc2/{KERNEL}", vgg16.FC7, KERNEL, _fc2_to_fc7_kernel),
        Entry(f"fc2/{BIAS}", vgg16.FC7, BIAS, _every_fourth),
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


def _resolve(path):
    """A directory -> its latest checkpoint, or its single checkpoint prefix or weights file."""
    if not os.path.isdir(path):
        return path
    latest = tf.train.latest_checkpoint(path)
    if latest:
        return latest
    index = TF_CHECKPOINT_INDEX_SUFFIX
    candidates = [p[: -len(index)] for p in glob.glob(os.path.join(path, "*" + index))]
    candidates += [p for suffix in WEIGHTS_FILE_SUFFIXES for p in glob.glob(os.path.join(path, "*" + suffix))]
    if len(candidates) != 1:
        raise ValueError(f"{path}: expected one checkpoint (*.index) or weights file (*.h5, *.pth, *.safetensors), "
                         f"found {sorted(candidates) or 'none'}")
    return candidates[0]


def mobilenet_v3_overrides(path):
    """The config fields (presets.SSDConfig) a MobileNetV3 backbone from `path` needs: the full tail
    (reduced_tail=False, as torchvision builds it around an ImageNet backbone), and for Keras's weights
    (keras:imagenet, a .h5 / .weights.h5 file) backbone_padding="keras"."""
    if path == presets.KERAS_IMAGENET or _resolve(path).endswith(H5_SUFFIXES):
        return {"reduced_tail": False, "backbone_padding": presets.KERAS_PADDING}
    return {"reduced_tail": False}


def load_backbone(model, path=DEFAULT_CHECKPOINT_DIR, bgr_checkpoint=True) -> int:
    """Loads backbone weights from `path` into `model` (built by nets.ssd.build); returns the count loaded.

    `path`: a TF checkpoint prefix, a Keras .h5, a .pth/.pt/.safetensors file (module docstring), or a
    directory holding exactly one of them; for the SSDLite presets also `keras:imagenet`.
    `bgr_checkpoint`: the weights expect BGR input, so conv1_1's input channels are reversed.
    Raises ValueError listing every variable that is missing or of the wrong shape.
    """
    mobilenet = any(layer.name == mobilenet_v3.FIRST_LAYER for layer in model.layers)   # the SSDLite presets
    if path == presets.KERAS_IMAGENET:
        if not mobilenet:
            raise ValueError(f"--checkpoint_path {path} is Keras's MobileNetV3Large: only the SSDLite presets take it")
        return keras_mobilenet_v3.load_imagenet(model)
    resolved = _resolve(path)
    if resolved.endswith(TORCH_WEIGHTS_SUFFIXES):
        if mobilenet:
            return torchvision_ssdlite.load_imagenet_backbone(model, resolved)
        return torch_weights.load(model, resolved, bgr_checkpoint)
    if resolved.endswith(H5_SUFFIXES):
        if mobilenet:
            return keras_mobilenet_v3.load_file(model, resolved)
        return assign(model, read_keras_h5(resolved), keras_h5_table(bgr_checkpoint), resolved)
    table = slim_checkpoint_table(bgr_checkpoint)
    return assign(model, read_tf_checkpoint(resolved, [e.source for e in table]), table, resolved)
