"""nets.torch_weights: PyTorch zip / legacy and safetensors files written here, without torch."""

import collections
import os
import pickle
import pickletools
import struct
import zipfile

import numpy as np
import pytest

from model import presets
from nets import backbone_loader, ssd, torch_weights
from tests import torch_files

RNG = np.random.default_rng(0)
STATE = collections.OrderedDict([
    ("conv.weight", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)),
    ("bn.running_var", RNG.random(4).astype(np.float64)),
    ("bn.num_batches_tracked", np.array(7, np.int64)),
    ("half", np.array([1.5, -2.0], np.float16)),
])


def _assert_same(read, state=STATE):
    assert list(read) == list(state)
    for name, array in state.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape, name
        np.testing.assert_array_equal(read[name], array)


def test_zip_layout_is_torch_save_s(tmp_path):
    path = tmp_path / "w.pth"
    torch_files.write_zip(path, STATE)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert names == ["archive/data.pkl", "archive/byteorder", "archive/data/0", "archive/data/1",
                         "archive/data/2", "archive/data/3", "archive/version", "archive/.data/serialization_id"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(archive.read("archive/data.pkl"))]
    with open(path, "rb") as f:
        raw = f.read()
    for info in zipfile.ZipFile(path).infolist():   # every record's bytes start 64-aligned, as torch's
        name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
        assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0
    assert ops[0] == ("PROTO", 2)
    assert ("GLOBAL", "torch._utils _rebuild_tensor_v2") in ops
    assert ("GLOBAL", "torch FloatStorage") in ops and ("GLOBAL", "torch LongStorage") in ops
    assert ("GLOBAL", "collections OrderedDict") in ops
    assert sum(name == "BINPERSID" for name, _ in ops) == 4


@pytest.mark.parametrize("archive_name", ["archive", "resnet34-333f7ec4"])
def test_zip_round_trip(tmp_path, archive_name):
    path = tmp_path / "w.pth"
    torch_files.write_zip(path, STATE, archive_name)
    _assert_same(torch_weights.read_weights(path))


@pytest.mark.parametrize("rebuild", ["_rebuild_tensor_v2", "_rebuild_tensor", "FloatTensor"])
def test_legacy_round_trip(tmp_path, rebuild):
    path = tmp_path / "w.pth"
    torch_files.write_legacy(path, STATE, rebuild)
    _assert_same(torch_weights.read_weights(path))


def test_safetensors_round_trip_and_bfloat16(tmp_path):
    path = tmp_path / "w.safetensors"
    torch_files.write_safetensors(path, STATE)
    _assert_same(torch_weights.read_weights(path))
    # bfloat16 is the top half of float32: 0x3F80 = 1.0, 0xC040 = -3.0.
    np.testing.assert_array_equal(torch_weights._to_numpy(struct.pack("<HH", 0x3F80, 0xC040), "bfloat16", 2),
                                  [1.0, -3.0])


def _hostile_pickle(marker):
    # GLOBAL posix/os system, the argument, REDUCE: what pickle.dumps of a malicious __reduce__ writes.
    return (b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(f"touch {marker}")) +
            f"touch {marker}".encode() + b"q\x01\x85q\x02Rq\x03.")


def test_hostile_zip_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _hostile_pickle(marker))
        archive.writestr("archive/version", "3\n")
    with pytest.raises(torch_weights.UnsafePickleError, match=r"evil\.pth: refusing to load the global os\.system"):
        torch_weights.read_weights(path)
    assert not marker.exists()
    assert pickle.loads(_hostile_pickle(marker)) == 0 and marker.exists()   # the payload is real


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("torch.nn.modules.conv", "Conv2d"),
                                          ("torch._utils", "_rebuild_parameter"), ("numpy", "load")])
def test_only_tensor_rebuilding_globals_are_allowed(tmp_path, module, name):
    path = tmp_path / "w.pth"
    with open(path, "wb") as f:
        pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2)
        f.write(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")
    with pytest.raises(torch_weights.UnsafePickleError, match=f"{module}.{name}"):
        torch_weights.read_weights(path)


def test_views_outside_their_storage_are_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch_files.write_zip(path, {"w": np.zeros(4, np.float32)})
    with zipfile.ZipFile(path) as archive:
        records = {n: archive.read(n) for n in archive.namelist()}
    # Same pickle, but the tensor claims 10 elements of the 4-element storage.
    records["archive/data.pkl"] = records["archive/data.pkl"].replace(b"K\x04\x85", b"K\x0a\x85")
    with zipfile.ZipFile(path, "w") as archive:
        for n, data in records.items():
            archive.writestr(n, data)
    with pytest.raises(ValueError, match="w: view reaches element 9 of a 4-element storage"):
        torch_weights.read_weights(path)


@pytest.fixture(scope="module")
def resnet_model():
    return ssd.build(presets.get("ssd300_resnet34", 80))


def _torchvision_state(model):
    """A torchvision resnet34 state dict (random values) with torch's layouts, plus what it also holds."""
    state = collections.OrderedDict()
    for torch_name, layer, kind in torch_weights.resnet34.torchvision_names():
        shape = tuple(getattr(model.get_layer(layer), kind).shape)
        if kind == "kernel":
            shape = (shape[3], shape[2], shape[0], shape[1])           # HWIO -> OIHW
        state[torch_name] = RNG.standard_normal(shape).astype(np.float32)
        if torch_name.endswith("running_var"):
            state[torch_name.replace("running_var", "num_batches_tracked")] = np.array(0, np.int64)
    state["layer4.0.conv1.weight"] = np.zeros((512, 256, 3, 3), np.float32)
    state["fc.weight"] = np.zeros((1000, 512), np.float32)
    return state


def test_resnet34_from_a_torchvision_file(tmp_path, resnet_model):
    state = _torchvision_state(resnet_model)
    path = tmp_path / "resnet34-333f7ec4.pth"
    torch_files.write_legacy(path, state)
    # conv1 + (6 + 8 + 12) block convs + 2 downsamples = 29 convs, each with a BN of 4 tensors.
    assert backbone_loader.load_backbone(resnet_model, str(path)) == 29 * 5
    np.testing.assert_array_equal(resnet_model.get_layer("conv1").kernel.numpy(),
                                  state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(resnet_model.get_layer("layer3_0_downsample_1").moving_variance.numpy(),
                                  state["layer3.0.downsample.1.running_var"])
    np.testing.assert_array_equal(resnet_model.get_layer("layer2_3_bn2").gamma.numpy(),
                                  state["layer2.3.bn2.weight"])


def test_resnet34_file_problems_are_all_listed(tmp_path, resnet_model):
    state = _torchvision_state(resnet_model)
    del state["layer1.2.conv2.weight"], state["bn1.running_mean"]
    path = tmp_path / "partial.safetensors"
    torch_files.write_safetensors(path, state)
    with pytest.raises(ValueError) as error:
        torch_weights.load(resnet_model, str(path))
    message = str(error.value)
    assert "2 of 145 variables missing" in message
    assert "layer1.2.conv2.weight: not in the file" in message and "bn1.running_mean: not in the file" in message
    state = _torchvision_state(resnet_model)
    state["layer2.0.conv3.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    torch_files.write_zip(path.with_suffix(".pth"), state)
    with pytest.raises(ValueError, match="1 file tensors match no layer:\n  layer2.0.conv3.weight"):
        torch_weights.load(resnet_model, str(path.with_suffix(".pth")))


def test_vgg16_reducedfc_of_ssd_pytorch(tmp_path):
    model = ssd.build(presets.get("ssd300_vgg16", 20, width_multiplier=0.25))
    layers = [n for block in torch_weights.vgg16.VGG16_CONV_BLOCKS for n, _ in block] + ["fc6", "fc7"]
    state = collections.OrderedDict()
    for index, layer in zip(torch_weights.SSD_PYTORCH_VGG_INDICES, layers):
        kh, kw, cin, cout = model.get_layer(layer).kernel.shape
        state[f"vgg.{index}.weight"] = RNG.standard_normal((cout, cin, kh, kw)).astype(np.float32)
        state[f"vgg.{index}.bias"] = RNG.standard_normal(cout).astype(np.float32)
    state["L2Norm.weight"] = np.ones(128, np.float32)       # the rest of an ssd.pytorch checkpoint
    os.makedirs(tmp_path / "pretrained")
    torch_files.write_zip(tmp_path / "pretrained" / "vgg16_reducedfc.pth", state)
    assert backbone_loader.load_backbone(model, str(tmp_path / "pretrained")) == 30
    # Caffe weights see BGR: conv1_1's input channel axis is reversed for our RGB input.
    np.testing.assert_array_equal(model.get_layer("conv1_1").kernel.numpy(),
                                  state["vgg.0.weight"].transpose(2, 3, 1, 0)[:, :, ::-1, :])
    np.testing.assert_array_equal(model.get_layer("fc6").kernel.numpy(), state["vgg.31.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("conv5_3").bias.numpy(), state["vgg.28.bias"])
    # ssd.pytorch's own file has no "vgg." prefix (it is loaded into ssd_net.vgg).
    bare = collections.OrderedDict((k[len("vgg."):], v) for k, v in state.items() if k.startswith("vgg."))
    torch_files.write_legacy(tmp_path / "bare.pth", bare)
    assert torch_weights.load(model, str(tmp_path / "bare.pth")) == 30
