"""PyTorch and safetensors weight files -> numpy, without torch and without running pickled code, and
the tables that load them into our backbones (`load`, reached through nets.backbone_loader.load_backbone):

* torchvision's ResNet34 (`resnet34-333f7ec4.pth`: conv1, bn1, layer1..layer3; layer4 and fc are not
  used) -> nets.resnet34, for the ssd300_resnet34 preset (`resnet34_table`);
* ssd.pytorch's VGG16 (`vgg16_reducedfc.pth`: "0.weight" ... "33.bias", or the "vgg.*" part of a whole
  ssd.pytorch checkpoint, whose extras, L2Norm and heads are not loaded) -> nets.vgg16 conv1_1 ... fc7
  (`vgg16_reducedfc_table`).

The model picks the table (a ResNet34 backbone has layer3_0_conv1; anything else is taken for VGG16).

Formats read (`read_weights(path)` -> {name: np.ndarray}):

* PyTorch zip (torch.save since 1.6): a stored zip with `<archive>/data.pkl` (pickle protocol 2) and one
  raw little-endian record `<archive>/data/<key>` per storage. A tensor is pickled as
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`,
  where `storage` is a persistent id `("storage", torch.<T>Storage, key, location, numel)`.
* PyTorch legacy (before 1.6; torchvision's `resnet34-333f7ec4.pth` and ssd.pytorch's
  `vgg16_reducedfc.pth` date from 2017): five pickles in a row -- magic number, protocol version,
  system info, the object (persistent ids `("storage", type, key, location, numel, view)`), the sorted
  storage keys -- then each storage as an int64 element count and its raw bytes. Tensors of torch 0.2-0.3
  use `torch._utils._rebuild_tensor(storage, offset, size, stride)`; those of torch 0.1 are
  `torch.FloatTensor()` built with the state (storage, offset, size, stride), which torch's own
  Tensor.__setstate__ still reads as "legacy serialization of Tensor".
* safetensors: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
  data_offsets}}, raw bytes. Parsed here; no safetensors dependency.

Safety: pickles are read by `_RestrictedUnpickler`, whose `find_class` resolves only the two tensor
rebuild functions (to our own numpy versions), `collections.OrderedDict` and the torch storage type
names (to dtype markers); any other global (`os.system`, `builtins.eval`, a torch module class, ...)
raises `UnsafePickleError` before anything is called. Tensor views are bounds-checked against their
storage, so a crafted offset or stride cannot read outside it.

Tables are lists of nets.weight_table rows applied by `weight_table.assign`: torch conv weights
[O, I, H, W] become Keras kernels [H, W, I, O] (`weight_table.oihw_to_hwio`).
"""

import collections
import json
import pickle
import struct
import zipfile
from typing import Dict, NamedTuple

import numpy as np

from nets import resnet34, vgg16
from nets.weight_table import (BIAS, KERNEL, SAFETENSORS_SUFFIXES, Entry, assign, identity, oihw_to_hwio,
                               oihw_to_hwio_bgr)

# torch/serialization.py: the legacy format's first two pickles.
LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class names -> numpy dtype ("bfloat16" is widened to float32 by hand).
STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}
SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bfloat16", "I64": "<i8",
                      "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
_ITEMSIZE = {"bfloat16": 2}


class UnsafePickleError(pickle.UnpicklingError):
    """The file's pickle names a global outside the allowed tensor-rebuilding set."""


class _StorageType(NamedTuple):
    dtype: str


class _StorageRef(NamedTuple):
    key: str                    # the (root) storage's record key
    dtype: str
    numel: int                  # elements of that storage
    view: tuple = None          # legacy (view_key, offset, size): a slice of the root storage


class _TensorRef(NamedTuple):
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """Stand-in for torch._utils._rebuild_tensor(_v2): records the view, builds nothing yet."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _LegacyTensor:
    """Stand-in for torch 0.1's `torch.FloatTensor()`; BUILD hands it (storage, offset, size, stride)."""

    ref = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 4):
            raise pickle.UnpicklingError(f"unexpected legacy tensor state {state!r:.200}")
        self.ref = _rebuild_tensor(*state)


# torch 0.1 tensor class names (their storages carry the dtype).
LEGACY_TENSOR_TYPES = {name.replace("Storage", "Tensor") for name in STORAGE_DTYPES}

_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and name in LEGACY_TENSOR_TYPES:
            return _LegacyTensor
        raise UnsafePickleError(f"{self.source}: refusing to load the global {module}.{name}: a weights "
                                "file may only hold tensors and ordered dicts (nothing was executed)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"{self.source}: unexpected persistent id {pid!r:.200}")
        view = pid[5] if len(pid) == 6 else None
        return _StorageRef(str(pid[2]), pid[1].dtype, int(pid[4]), tuple(view) if view else None)


def _to_numpy(raw, dtype, count):
    if dtype == "bfloat16":   # the top half of a float32
        halves = np.frombuffer(raw, "<u2", count)
        return (halves.astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype, count)


def _itemsize(dtype):
    return _ITEMSIZE.get(dtype) or np.dtype(dtype).itemsize


def _materialize(tensor, storages, source, name):
    ref = tensor.storage
    flat = storages[ref.key]
    if ref.view:   # legacy: key is the root storage, view = (view key, offset, size) inside it
        flat = flat[int(ref.view[1]):int(ref.view[1]) + int(ref.view[2])]
    if any(s < 0 for s in tensor.size + tensor.stride) or len(tensor.size) != len(tensor.stride):
        raise ValueError(f"{source}: {name}: invalid size {tensor.size} / stride {tensor.stride}")
    if 0 in tensor.size:
        return np.zeros(tensor.size, flat.dtype)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if tensor.offset < 0 or last >= flat.size:
        raise ValueError(f"{source}: {name}: view reaches element {last} of a {flat.size}-element storage")
    if not tensor.size:   # a 0-d tensor (e.g. BN's num_batches_tracked)
        return flat[tensor.offset:tensor.offset + 1].reshape(()).copy()
    strides = [s * flat.itemsize for s in tensor.stride]
    return np.lib.stride_tricks.as_strided(flat[tensor.offset:], tensor.size, strides).copy()


def _state_dict(obj, source):
    """The {name: tensor ref} of a state dict or of a checkpoint dict holding one under 'state_dict'."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict):
        obj = {k: v.ref if isinstance(v, _LegacyTensor) and v.ref is not None else v for k, v in obj.items()}
    if not isinstance(obj, dict) or not all(isinstance(v, _TensorRef) for v in obj.values()):
        raise ValueError(f"{source}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def _read_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: a PyTorch zip holds one <archive>/data.pkl, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as stream:
            tensors = _state_dict(_RestrictedUnpickler(stream, path).load(), path)
        storages = {}
        for ref in {t.storage for t in tensors.values()}:
            record = f"{prefix}data/{ref.key}"
            if record not in names:
                raise ValueError(f"{path}: storage record {record} is missing")
            raw = archive.read(record)
            if len(raw) < ref.numel * _itemsize(ref.dtype):
                raise ValueError(f"{path}: {record} has {len(raw)} bytes, needs {ref.numel * _itemsize(ref.dtype)}")
            storages[ref.key] = _to_numpy(raw, ref.dtype, ref.numel)
    return {name: _materialize(t, storages, path, name) for name, t in tensors.items()}


def _read_legacy(path):
    with open(path, "rb") as stream:
        def load():
            return _RestrictedUnpickler(stream, path).load()
        if load() != LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path}: not a PyTorch file (no zip directory, no legacy magic number)")
        if load() != LEGACY_PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported legacy PyTorch protocol version")
        sys_info = load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: written on a big-endian machine; not supported")
        tensors = _state_dict(load(), path)
        refs = {t.storage.key: t.storage for t in tensors.values()}
        keys = load()
        storages = {}
        for key in keys:
            (count,) = struct.unpack("<q", stream.read(8))
            ref = refs.get(str(key))
            if ref is None:
                raise ValueError(f"{path}: storage {key} has no known type")
            size = _itemsize(ref.dtype)
            if count not in (ref.numel, ref.numel * size):   # element count (older: byte count)
                raise ValueError(f"{path}: storage {key} has {count} elements, the pickle says {ref.numel}")
            raw = stream.read(ref.numel * size)
            if len(raw) != ref.numel * size:
                raise ValueError(f"{path}: truncated at storage {key}")
            storages[str(key)] = _to_numpy(raw, ref.dtype, ref.numel)
    missing = {t.storage.key for t in tensors.values()} - set(storages)
    if missing:
        raise ValueError(f"{path}: storages {sorted(missing)} are missing")
    return {name: _materialize(t, storages, path, name) for name, t in tensors.items()}


def _read_safetensors(path):
    with open(path, "rb") as stream:
        head = stream.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: too short for a safetensors file")
        (header_size,) = struct.unpack("<Q", head)
        try:
            header = json.loads(stream.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: unreadable safetensors header ({error})") from None
        data = stream.read()
    weights = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec.get("dtype") not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: {name}: unsupported dtype {spec.get('dtype')!r}")
        dtype = SAFETENSORS_DTYPES[spec["dtype"]]
        begin, end = spec["data_offsets"]
        shape = tuple(int(s) for s in spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(data) or end - begin != count * _itemsize(dtype):
            raise ValueError(f"{path}: {name}: data_offsets {begin}..{end} do not fit shape {shape} {spec['dtype']}")
        weights[name] = _to_numpy(data[begin:end], dtype, count).reshape(shape).copy()
    return weights


def read_weights(path) -> Dict[str, np.ndarray]:
    """{name: array} of a .pth/.pt (zip or legacy) or .safetensors file; ValueError on a malformed
    file, UnsafePickleError on a pickle naming anything but tensors and ordered dicts."""
    if str(path).endswith(SAFETENSORS_SUFFIXES):
        return _read_safetensors(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_legacy(path)


def resnet34_table():
    """torchvision resnet34 names (conv1.weight, bn1.*, layer1.0.conv1.weight, ..., layer3.*) -> nets.resnet34."""
    return [Entry(t, layer, kind, oihw_to_hwio if kind == KERNEL else identity)
            for t, layer, kind in resnet34.torchvision_names()]


# ssd.pytorch's vgg() ModuleList: the index of each conv (ReLUs and pools take the others).
SSD_PYTORCH_VGG_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33)


def vgg16_reducedfc_table(bgr_checkpoint=True, prefix=""):
    """ssd.pytorch `vgg16_reducedfc.pth` names ("<prefix>0.weight" ... "<prefix>33.bias") -> conv1_1 ... fc7.

    The file is Caffe's VGG_ILSVRC_16_layers_fc_reduced converted to PyTorch: BGR input, 0-255 minus
    the mean (ssd.pytorch feeds cv2's BGR images minus (104, 117, 123)), so conv1_1's input channels
    are reversed for our RGB pipeline; no scaling is needed (our VGG input is 0-255 minus the mean).
    """
    layers = [name for block in vgg16.VGG16_CONV_BLOCKS for name, _ in block] + [vgg16.FC6, vgg16.FC7]
    entries = []
    for index, layer in zip(SSD_PYTORCH_VGG_INDICES, layers):
        first = bgr_checkpoint and layer == "conv1_1"
        entries.append(Entry(f"{prefix}{index}.weight", layer, KERNEL, oihw_to_hwio_bgr if first else oihw_to_hwio))
        entries.append(Entry(f"{prefix}{index}.bias", layer, BIAS, identity))
    return entries


# Names a torchvision resnet34 file holds that the SSD backbone does not use (layer4, the classifier)
# or that carry no weight (BN's batch counter since torch 0.4.1).
_RESNET34_UNUSED = ("layer4.", "fc.")
_BOOKKEEPING_SUFFIX = ".num_batches_tracked"


def table_for(model, weights, bgr_checkpoint=True):
    """(table, unmatched file names) for `model`'s backbone and the names found in `weights`."""
    names = set(weights)
    if any(layer.name == "layer3_0_conv1" for layer in model.layers):
        table = resnet34_table()
        used = {e.source for e in table}
        unmatched = sorted(n for n in names - used
                           if not n.startswith(_RESNET34_UNUSED) and not n.endswith(_BOOKKEEPING_SUFFIX))
        return table, unmatched
    prefix = "vgg." if any(n.startswith("vgg.") for n in names) else ""
    table = vgg16_reducedfc_table(bgr_checkpoint, prefix)
    used = {e.source for e in table}
    # ssd.pytorch's whole-model checkpoints also hold extras/L2Norm/heads: those are not the backbone.
    unmatched = sorted(n for n in names - used if n.startswith(prefix) and (prefix or n.split(".")[0].isdigit()))
    return table, unmatched


def load(model, path, bgr_checkpoint=True):
    """Reads `path` and assigns its backbone weights into `model`; returns the number assigned.

    Raises ValueError listing every model weight the file lacks (or holds in the wrong shape) and every
    backbone-looking file name that matches no layer.
    """
    weights = read_weights(path)
    table, unmatched = table_for(model, weights, bgr_checkpoint)
    if unmatched:
        raise ValueError(f"cannot load the backbone from {path}: {len(unmatched)} file tensors match no "
                         "layer:\n  " + "\n  ".join(unmatched))
    return assign(model, weights, table, path)
