"""Output sets and files (issue 11, items 3, 6, 7 and parts of 9): byte-identical converter output, an
output set replaced whole or not at all under SIGKILL, the umask followed by every file and folder,
DTDs refused in any encoding, bad boxes from other tools dropped, and the serving pixel cap."""

import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT
from dataset import atomic, label_map, reader, tfrecord, voc
from engine import checkpoints

CONVERT = """
import sys
from dataset import convert
sys.stdout.write("READY\\n"); sys.stdout.flush()
splits = {"train": [convert.Split.parse("sample:train")], "val": [convert.Split.parse("sample:val")]}
convert.convert(sys.argv[1], sys.argv[2], splits, {"train": int(sys.argv[3]), "val": 2}, num_threads=2)
"""


def _convert_process(output_dir, train_shards, hash_seed="0"):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED=hash_seed, PYTHONPATH=REPO_ROOT)
    return subprocess.Popen([sys.executable, "-c", CONVERT, os.path.join(REPO_ROOT, "dataset"), str(output_dir),
                             str(train_shards)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)


def _contents(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.mark.slow
def test_kills_over_an_older_output_leave_the_old_set_or_the_new_set_never_a_mix(tmp_path, sample_records):
    out = tmp_path / "records"
    proc = _convert_process(out, 3, hash_seed="1")   # the older set: 3 train shards
    assert proc.wait(timeout=300) == 0
    old = _contents(out)
    assert sorted(old) == ["label_map.pbtxt", "train-00000-of-00003", "train-00001-of-00003",
                           "train-00002-of-00003", "val-00000-of-00002", "val-00001-of-00002"]
    outcomes = []
    for delay in (0.0, 0.15, 0.4, 0.8, 1.5):
        proc = _convert_process(out, 4, hash_seed="2")
        assert proc.stdout.readline() == "READY\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = _contents(out)
        assert now == old or now == _contents(type(out)(sample_records)), (delay, sorted(now))
        outcomes.append("old" if now == old else "new")
        if now != old:
            break
    assert outcomes[0] == "old"  # killed while its shards were being written: the old set, untouched
    # A run to the end replaces the set; leftovers of the killed runs are gone, nothing mixes in.
    proc = _convert_process(out, 4, hash_seed="3")
    assert proc.wait(timeout=300) == 0
    new = _contents(out)
    # Byte-identical to the session's in-process conversion (another process, another hash seed).
    assert new == _contents(type(out)(sample_records))
    assert [n for n in os.listdir(tmp_path) if n != "records"] == []


def test_a_kill_between_the_two_renames_is_recovered_by_the_next_run(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "label_map.pbtxt").write_text("old")
    staging = atomic.make_temp_folder(str(tmp_path), "out")
    with open(os.path.join(staging, "label_map.pbtxt"), "w") as f:
        f.write("new")
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)   # a system without renameat2
    real_replace, calls = os.replace, []

    def dies_on_second_rename(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise KeyboardInterrupt   # as if killed after moving the old set aside
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", dies_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        atomic.replace_folder(staging, str(out))
    monkeypatch.setattr(os, "replace", real_replace)
    assert not out.exists()
    removed = atomic.recover_folder(str(out))
    assert (out / "label_map.pbtxt").read_text() == "old" and os.listdir(tmp_path) == ["out"]
    assert len(removed) == 1 and ".out.tmp-" in removed[0]


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_every_file_and_folder_written_follows_the_umask(tmp_path, umask, file_mode, folder_mode):
    from dataset import convert
    from model import presets
    previous = os.umask(umask)
    try:
        label_path = tmp_path / "label_map.pbtxt"
        label_map.write_label_map(str(label_path), ["cat"])
        model_dir = tmp_path / "model_dir"
        checkpoints.write(str(model_dir), presets.get("ssd300_vgg16", 1, width_multiplier=0.125), ["cat"])
        out = tmp_path / "records"
        splits = {"train": [convert.Split.parse("sample:val")]}
        convert.convert(os.path.join(REPO_ROOT, "dataset"), str(out), splits, {"train": 2}, num_threads=2)
        staging = atomic.make_temp_folder(str(tmp_path), "export")
    finally:
        os.umask(previous)
    files = [label_path, model_dir / "config.json", model_dir / "label_map.pbtxt"] + sorted(out.iterdir())
    assert {str(p): _mode(p) for p in files} == {str(p): file_mode for p in files}
    assert _mode(out) == folder_mode and _mode(staging) == folder_mode


@pytest.mark.slow
def test_exported_model_folder_is_readable_by_other_users(tmp_path):
    from engine import serving
    from test_export import CLASS_NAMES, write_random_model_dir
    write_random_model_dir(tmp_path / "model_dir")
    module, _, _, _ = serving.from_checkpoint(str(tmp_path / "model_dir"))
    previous = os.umask(0o022)
    try:
        export_dir = serving.export(module, CLASS_NAMES, str(tmp_path / "exported"))
    finally:
        os.umask(previous)
    assert _mode(export_dir) == 0o755
    for root, dirs, names in os.walk(export_dir):
        assert all(_mode(os.path.join(root, d)) == 0o755 for d in dirs)
        assert all(_mode(os.path.join(root, n)) == 0o644 for n in names), [(n, oct(_mode(os.path.join(root, n))))
                                                                           for n in names]
    # serving_encoded refuses an image over the converter's pixel cap, from the JPEG header alone:
    # a 40x30 JPEG whose SOF0 header claims 8000 x 8000 (64 Mpx > 50 Mpx) is never decoded.
    from test_convert import jpeg_bytes
    small = bytearray(jpeg_bytes(40, 30, 0))
    sof = small.index(b"\xff\xc0")
    small[sof + 5:sof + 9] = (8000).to_bytes(2, "big") * 2
    with pytest.raises(tf.errors.InvalidArgumentError, match="50000000-pixel cap"):
        module.serve_encoded(tf.constant([bytes(small)]))
    outputs = module.serve_encoded(tf.constant([jpeg_bytes(40, 30, 0)]))  # a normal image still works
    assert outputs["num_detections"].shape == (1,)


BOMB = ('<?xml version="1.0" encoding="{enc}"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><annotation><filename>&b;</filename></annotation>')
XXE = ('<?xml version="1.0" encoding="{enc}"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       '<annotation><filename>&x;</filename></annotation>')
GOOD = ('<?xml version="1.0" encoding="{enc}"?><annotation><filename>ñ.jpg</filename><object><name>dog</name>'
        '<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object></annotation>')
ENCODINGS = [("UTF-16", lambda t: t.encode("utf-16")),                 # with its BOM, little-endian here
             ("UTF-16", lambda t: b"\xfe\xff" + t.encode("utf-16-be")),
             ("UTF-8", lambda t: b"\xef\xbb\xbf" + t.encode("utf-8")),  # UTF-8 with a BOM
             ("ISO-8859-1", lambda t: t.encode("latin-1"))]


@pytest.mark.parametrize("declared, encode", ENCODINGS, ids=["utf16le_bom", "utf16be_bom", "utf8_bom", "latin1"])
def test_dtds_and_entities_are_refused_in_any_encoding(declared, encode):
    for hostile in (BOMB, XXE):
        data = encode(hostile.format(enc=declared))
        assert b"<!DOCTYPE" not in data or declared in ("UTF-8", "ISO-8859-1")
        with pytest.raises(voc.BadInput, match="declares a DTD or entities"):
            voc.parse_annotation(data)
    annotation = voc.parse_annotation(encode(GOOD.format(enc=declared)))   # the same encodings, benign
    assert annotation.filename == "ñ.jpg" and annotation.objects[0].box == (1.0, 2.0, 3.0, 4.0)


def test_boxes_from_other_tools_with_nan_inf_or_no_extent_are_dropped_with_a_warning(tmp_path, capfd):
    from test_convert import jpeg_bytes
    nan, inf = float("nan"), float("inf")
    boxes = np.array([[0.1, 0.1, 0.5, 0.5],     # good
                      [nan, 0.1, 0.5, 0.5],     # NaN
                      [0.1, 0.1, inf, 0.5],     # infinite
                      [0.6, 0.1, 0.5, 0.5],     # inverted (ymax < ymin)
                      [0.2, 0.3, 0.4, 0.3],     # no width
                      [0.2, 0.2, 0.9, 0.8]],    # good
                     np.float32)
    record = tfrecord.ImageRecord(image_id="other_tool", filename="x.jpg", jpeg=jpeg_bytes(40, 30, 0), width=40,
                                  height=30, boxes=boxes, labels=(1, 2, 3, 4, 5, 6), class_names=("a",) * 6,
                                  difficult=(0, 1, 0, 0, 0, 1), truncated=(0,) * 6, poses=("",) * 6)
    path = str(tmp_path / "train-00000-of-00001")
    tfrecord.write_shard(path, [tfrecord.serialize(tfrecord.build_example(record))])
    example = next(iter(reader.read_split(str(tmp_path), "train")))
    np.testing.assert_array_equal(example["boxes"].numpy(), boxes[[0, 5]])
    assert example["labels"].numpy().tolist() == [1, 6]
    assert example["difficult"].numpy().tolist() == [False, True]
    assert ('WARNING: record "other_tool" has 4 boxes with NaN/infinite coordinates or no extent; dropped'
            in capfd.readouterr().err)
    assert reader.count_records(path) == 1


@pytest.mark.slow
def test_data_dir_and_converter_output_defaults_are_one_folder_from_any_working_folder(tmp_path):
    code = ("import sys; sys.argv = ['x']; import {module}; "
            "print({module}.FLAGS['{flag}'].default)")
    defaults = set()
    for module, flag in (("train_ssd", "data_dir"), ("eval_ssd", "data_dir"),
                         ("convert_voc_sample_tfrecords", "output_directory"), ("visualize_augmentation", "data_dir")):
        out = subprocess.run([sys.executable, "-c", code.format(module=module, flag=flag)], cwd=str(tmp_path),
                             env=dict(os.environ, PYTHONPATH=REPO_ROOT), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        defaults.add(out.stdout.strip())
    assert defaults == {os.path.join(REPO_ROOT, "dataset", "tfrecords")}


def test_jpeg_that_decodes_only_with_libjpeg_warnings_is_reported_as_corrupt():
    import io
    from PIL import Image
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    good = buffer.getvalue()
    start_of_scan = good.index(b"\xff\xda")
    cut = good[:(start_of_scan + len(good)) // 2] + b"\xff\xd9"      # data cut short, but an end marker
    extraneous = good[:-2] + b"\x00\x00\x00\xff\xd9"                # garbage before the end marker
    for data, warning in ((cut, "premature end of data segment"), (extraneous, "3 extraneous bytes")):
        Image.open(io.BytesIO(data)).load()   # Pillow decodes both without a word
        with pytest.raises(voc.BadInput, match="corrupt JPEG data.*" + warning):
            voc.load_image(data)
    assert voc.load_image(good).jpeg == good
