"""Writes PyTorch weight files the way torch.save does, without torch (for tests of nets.torch_weights).

The pickle is produced by the standard pure-Python pickler (protocol 2, as torch.save uses), with two
stand-ins emitted as the very GLOBAL opcodes torch writes: `torch._utils _rebuild_tensor_v2` (or
`_rebuild_tensor` for torch 0.2-0.3 files, or torch 0.1's `torch FloatTensor` + BUILD) and
`torch FloatStorage` etc. in the persistent ids.

Zip layout (torch >= 1.6, caffe2 PyTorchFileWriter): stored (uncompressed) records
`<archive>/data.pkl`, `<archive>/byteorder`, `<archive>/data/<key>`, `<archive>/version`,
`<archive>/.data/serialization_id`, each record's bytes aligned to 64 in the file by padding its
local header's extra field ("FB" id).
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

STORAGE_NAMES = {np.dtype("<f4"): "FloatStorage", np.dtype("<f8"): "DoubleStorage",
                 np.dtype("<i8"): "LongStorage", np.dtype("<f2"): "HalfStorage"}


class Global:
    """A name to emit as a GLOBAL opcode (callable so save_reduce accepts it as a reduce function)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):
        raise AssertionError("never called")


class Tensor:
    def __init__(self, array, key):
        self.array, self.key = np.array(array, order="C"), key  # (ascontiguousarray makes 0-d 1-d)


class _TorchPickler(pickle._Pickler):
    def __init__(self, file, rebuild="_rebuild_tensor_v2", legacy=False):
        super().__init__(file, protocol=2)
        self.rebuild, self.legacy = rebuild, legacy

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
            return
        if isinstance(obj, Tensor):
            stride = tuple(s // obj.array.itemsize for s in obj.array.strides)
            args = (_Storage(obj), 0, tuple(obj.array.shape), stride)
            if self.rebuild == "FloatTensor":   # torch 0.1: torch.FloatTensor() then BUILD with the state
                kind = STORAGE_NAMES[obj.array.dtype].replace("Storage", "Tensor")
                self.save_reduce(Global("torch", kind), (), state=args, obj=obj)
                return
            if self.rebuild == "_rebuild_tensor_v2":
                args += (False, collections.OrderedDict())
            self.save_reduce(Global("torch._utils", self.rebuild), args, obj=obj)
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            kind = Global("torch", STORAGE_NAMES[obj.tensor.array.dtype])
            pid = ("storage", kind, obj.tensor.key, "cpu", obj.tensor.array.size)
            return pid + (None,) if self.legacy else pid
        return None


class _Storage:
    def __init__(self, tensor):
        self.tensor = tensor


def _tensors(state):
    return collections.OrderedDict((name, Tensor(a, str(i))) for i, (name, a) in enumerate(state.items()))


def pickle_bytes(state, **kwargs):
    stream = io.BytesIO()
    _TorchPickler(stream, **kwargs).dump(_tensors(state))
    return stream.getvalue()


def _aligned_record(archive, name, data, alignment=64):
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    start = archive.fp.tell() + 30 + len(name.encode("utf8"))
    pad = (-(start + 4)) % alignment
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    archive.writestr(info, data)


def write_zip(path, state, archive_name="archive"):
    """torch.save(state_dict, path) in the zip format: state maps names to numpy arrays."""
    tensors = _tensors(state)
    stream = io.BytesIO()
    _TorchPickler(stream).dump(tensors)
    with zipfile.ZipFile(path, "w") as archive:
        _aligned_record(archive, f"{archive_name}/data.pkl", stream.getvalue())
        _aligned_record(archive, f"{archive_name}/byteorder", b"little")
        for tensor in tensors.values():
            _aligned_record(archive, f"{archive_name}/data/{tensor.key}", tensor.array.tobytes())
        _aligned_record(archive, f"{archive_name}/version", b"3\n")
        _aligned_record(archive, f"{archive_name}/.data/serialization_id", b"0123456789")


def write_legacy(path, state, rebuild="_rebuild_tensor_v2"):
    """torch.save(..., _use_new_zipfile_serialization=False) / torch < 1.6: five pickles, then storages."""
    tensors = _tensors(state)
    with open(path, "wb") as f:
        pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        _TorchPickler(f, rebuild=rebuild, legacy=True).dump(tensors)
        keys = sorted(t.key for t in tensors.values())
        pickle.dump(keys, f, protocol=2)
        by_key = {t.key: t for t in tensors.values()}
        for key in keys:
            f.write(struct.pack("<q", by_key[key].array.size))
            f.write(by_key[key].array.tobytes())


def write_safetensors(path, state):
    import json
    header, chunks, offset = {}, [], 0
    names = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<i8"): "I64", np.dtype("<f2"): "F16"}
    for name, array in state.items():
        raw = np.array(array, order="C").tobytes()
        header[name] = {"dtype": names[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode("utf8")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))
