"""The weight-table vocabulary of nets/: the one row type, layout converters, file suffixes and assigner.

A weights file becomes model weights in two steps that every loader shares:

1. a reader turns the file into {file name: np.ndarray} (nets.backbone_loader reads TF checkpoints and
   Keras HDF5 files, nets.torch_weights reads PyTorch and safetensors files);
2. a table, a list of `Entry` rows (file name -> one weight of one named Keras layer, with the function
   converting the file's layout into Keras's), is applied by `assign`: every row is found and converted
   to its weight's shape, or nothing is assigned and a ValueError lists every row that is not.

Layout converters live here (`identity`, `reverse_input_channels` for BGR-trained first convs,
`oihw_to_hwio` for torch convs); a conversion that belongs to one file's architecture (Keras VGG16's
fc1 -> atrous fc6) stays beside its table. File kinds are told apart by the suffixes below.

Imports nothing of nets/: the loaders import this module, never each other's rows.
"""

import dataclasses
from typing import Callable, Dict, Iterable

import numpy as np
from absl import logging

# Keras weight names a row may target (getattr(layer, kind)); batch norm adds gamma, beta,
# moving_mean and moving_variance (nets.resnet34.torchvision_names).
KERNEL, BIAS = "kernel", "bias"

# File kinds, by name. A TF checkpoint is a prefix with a `<prefix>.index` beside its data shards.
TF_CHECKPOINT_INDEX_SUFFIX = ".index"
H5_SUFFIXES = (".h5", ".hdf5")                   # Keras HDF5 weights (nets.backbone_loader)
TORCH_SUFFIXES = (".pth", ".pt")                 # torch.save, zip or legacy (nets.torch_weights)
SAFETENSORS_SUFFIXES = (".safetensors",)         # (nets.torch_weights)
TORCH_WEIGHTS_SUFFIXES = TORCH_SUFFIXES + SAFETENSORS_SUFFIXES   # every file nets.torch_weights reads
WEIGHTS_FILE_SUFFIXES = H5_SUFFIXES + TORCH_WEIGHTS_SUFFIXES     # every single-file kind


@dataclasses.dataclass(frozen=True)
class Entry:
    """One file tensor -> one weight of one model layer, with the conversion between their layouts."""

    source: str                                 # name in the file
    layer: str                                  # Keras layer name (nets.vgg16, nets.resnet34, DESIGN.md)
    kind: str                                   # the layer's weight attribute: KERNEL, BIAS, gamma, ...
    convert: Callable[[np.ndarray], np.ndarray]


def identity(value):
    """Same layout in the file and in Keras (biases, TF kernels, batch-norm vectors)."""
    return value


def reverse_input_channels(kernel):
    """[kh, kw, 3, filters] BGR-input kernel -> the same kernel for RGB input (DESIGN.md)."""
    return kernel[:, :, ::-1, :]


def oihw_to_hwio(kernel):
    """torch conv weight [out, in, kh, kw] -> Keras kernel [kh, kw, in, out]."""
    return np.transpose(kernel, (2, 3, 1, 0))


def oihw_to_hwio_bgr(kernel):
    """torch first-conv weight of a BGR-trained model [out, 3, kh, kw] -> RGB Keras kernel [kh, kw, 3, out]."""
    return reverse_input_channels(oihw_to_hwio(kernel))


def assign(model, variables: Dict[str, np.ndarray], table: Iterable[Entry], source_description,
           what="backbone"):
    """Assigns every table entry from `variables` into `model`; returns how many were assigned.

    Raises ValueError listing every entry that is missing from `variables`, cannot be converted, or
    does not match its layer's weight shape (e.g. a width_multiplier != 1 model); nothing is assigned
    then. `what` names the part loaded in the messages ("backbone").
    """
    table = list(table)
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
        raise ValueError(f"cannot load the {what} from {source_description}: {len(problems)} of {len(table)} "
                         "variables missing or mismatched:\n  " + "\n  ".join(problems))
    for target, value in assignments:
        target.assign(value.astype(np.float32))
    logging.info("loaded %d of %d %s variables from %s", len(assignments), len(table), what, source_description)
    return len(assignments)
