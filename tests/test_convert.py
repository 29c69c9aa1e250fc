"""The converter on small fake VOCdevkit trees: layout, label maps, sharding, determinism, atomicity."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dataset import convert, label_map, reader, tfrecord

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


def jpeg_bytes(width, height, seed=0, mode="RGB", fmt="JPEG", **kwargs):
    """A small random image of the given mode, encoded in `fmt`."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def voc_xml(width, height, objects=(), filename="x.jpg"):
    """VOC annotation bytes; objects are (name, xmin, ymin, xmax, ymax[, difficult])."""
    parts = ["<annotation><filename>%s</filename><size><width>%d</width><height>%d</height>"
             "<depth>3</depth></size>" % (filename, width, height)]
    for name, xmin, ymin, xmax, ymax, *difficult in objects:
        parts.append("<object><name>%s</name><pose>Unspecified</pose><truncated>0</truncated>"
                     "<difficult>%d</difficult><bndbox><xmin>%s</xmin><ymin>%s</ymin><xmax>%s</xmax>"
                     "<ymax>%s</ymax></bndbox></object>" % (name, difficult[0] if difficult else 0,
                                                           xmin, ymin, xmax, ymax))
    return ("".join(parts) + "</annotation>").encode()


def make_voc(root, name, files, image_sets):
    """Write a VOC-layout dir root/name: files {id: (image bytes|None, xml bytes|None[, ext])}."""
    base = root / name
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (image, xml, *ext) in files.items():
        if image is not None:
            (base / "JPEGImages" / (image_id + (ext[0] if ext else ".jpg"))).write_bytes(image)
        if xml is not None:
            (base / "Annotations" / (image_id + ".xml")).write_bytes(xml)
    for set_name, ids in image_sets.items():
        (base / "ImageSets" / "Main" / (set_name + ".txt")).write_text("".join(i + "\n" for i in ids))
    return str(base)


def read_all(output_dir, split):
    with tf.device("/CPU:0"):
        return [{k: v.numpy() for k, v in e.items()} for e in reader.read_split(str(output_dir), split)]


@pytest.fixture
def devkit(tmp_path):
    """VOC2007 (trainval + test, a per-class list) and VOC2012 (trainval, default set) with 2-3 classes."""
    root = tmp_path / "VOCdevkit"
    make_voc(root, "VOC2007", {
        "000005": (jpeg_bytes(50, 40, 1), voc_xml(50, 40, [("dog", 1, 1, 25, 20), ("cat", 5, 5, 50, 40)])),
        "000007": (jpeg_bytes(30, 60, 2), voc_xml(30, 60, [("cat", 2, 3, 10, 60, 1)])),
        "000009": (jpeg_bytes(40, 40, 3), voc_xml(40, 40, [])),
        "000001": (jpeg_bytes(40, 30, 4), voc_xml(40, 30, [("bird", 1, 1, 40, 30)])),
    }, {"trainval": ["000005", "000007", "000009"], "test": ["000001"],
        "cat_trainval": ["000005  1", "000007  1", "000009 -1"]})
    make_voc(root, "VOC2012", {
        "2008_000002": (jpeg_bytes(60, 50, 5), voc_xml(60, 50, [("dog", 10, 10, 30, 30)])),
        "2008_000003": (jpeg_bytes(60, 50, 6), voc_xml(60, 50, [("cat", 1, 1, 2, 2)])),
    }, {"trainval": ["2008_000002", "2008_000003"]})
    return root


def run(root, output_dir, train, val, train_shards=2, val_shards=1, **kwargs):
    splits = {"train": [convert.Split.parse(s) for s in train.split(",")],
              "val": [convert.Split.parse(s) for s in val.split(",")]}
    return convert.convert(str(root), str(output_dir), splits, {"train": train_shards,
                                                                "val": val_shards}, **kwargs)


def test_split_spec_parsing():
    assert convert.Split.parse("VOC2007:trainval") == convert.Split("VOC2007", "trainval")
    assert convert.Split.parse(" VOC2012 ") == convert.Split("VOC2012", None)


def test_merged_voc2007_voc2012_layout(devkit, tmp_path):
    out = tmp_path / "out"
    results, classes = run(devkit, out, "VOC2007:trainval,VOC2012", "VOC2007:test")
    assert classes == ("bird", "cat", "dog")  # sorted union over both splits' annotations
    assert label_map.read_label_map(str(out / "label_map.pbtxt")) == classes
    assert sorted(os.listdir(out)) == ["label_map.pbtxt", "train-00000-of-00002",
                                       "train-00001-of-00002", "val-00000-of-00001"]
    train = read_all(out, "train")
    # Every listed image exactly once across the shards.
    assert sorted(e["image_id"].decode() for e in train) == [
        "000005", "000007", "000009", "2008_000002", "2008_000003"]
    assert (results["train"].images, results["train"].objects) == (5, 5)
    assert results["train"].difficult == 1
    assert results["train"].images_without_objects == 1
    assert dict(results["train"].objects_per_class) == {"cat": 3, "dog": 2}
    by_id = {e["image_id"].decode(): e for e in train}
    e = by_id["000005"]  # 50 x 40: dog (1,1,25,20) -> [0, 0, 20/40, 25/50]
    np.testing.assert_allclose(e["boxes"], [[0, 0, 0.5, 0.5], [4 / 40, 4 / 50, 1, 1]], rtol=1e-6)
    assert e["labels"].tolist() == [3, 2] and e["filename"] == b"000005.jpg"
    assert by_id["000007"]["difficult"].tolist() == [True]
    assert by_id["000009"]["boxes"].shape == (0, 4)
    assert [v["image_id"] for v in read_all(out, "val")] == [b"000001"]


def test_repeated_id_from_another_directory_is_skipped(devkit, tmp_path):
    make_voc(devkit, "VOC2012b", {"000005": (jpeg_bytes(20, 20), voc_xml(20, 20))},
             {"trainval": ["000005"]})
    results, _ = run(devkit, tmp_path / "out", "VOC2007,VOC2012b", "VOC2007:test")
    assert results["train"].images == 3
    assert results["train"].skipped == [(os.path.join(str(devkit), "VOC2012b", "000005"),
                                         "duplicate image id (already taken from %s)"
                                         % os.path.join(str(devkit), "VOC2007"))]


def test_per_class_image_set_lines_take_first_token(devkit, tmp_path):
    results, _ = run(devkit, tmp_path / "out", "VOC2007:cat_trainval", "VOC2007:test")
    assert results["train"].images == 3


def test_standard_voc_classes_in_standard_order(tmp_path):
    shuffled = list(np.random.default_rng(0).permutation(VOC_CLASSES))
    files = {"%06d" % i: (jpeg_bytes(20, 20, i), voc_xml(20, 20, [(c, 1, 1, 10, 10)]))
             for i, c in enumerate(shuffled)}
    make_voc(tmp_path, "VOC2007", files, {"trainval": sorted(files)[:12], "test": sorted(files)[12:]})
    _, classes = run(tmp_path, tmp_path / "out", "VOC2007", "VOC2007:test")
    assert classes == VOC_CLASSES


def test_label_map_fixes_ids_and_unknown_class_is_an_error(devkit, tmp_path):
    given = tmp_path / "given.pbtxt"
    label_map.write_label_map(str(given), ["dog", "cat"])
    with pytest.raises(convert.UnknownClassError, match=r"000001.*'bird'"):
        run(devkit, tmp_path / "out", "VOC2007", "VOC2007:test", label_map_path=str(given))
    assert not (tmp_path / "out").exists()  # refused before writing anything
    results, classes = run(devkit, tmp_path / "out", "VOC2007", "VOC2007:test",
                           label_map_path=str(given), skip_unknown=True)
    assert classes == ("dog", "cat")
    assert results["val"].repaired == [(os.path.join(str(devkit), "VOC2007", "000001"),
                                        "dropped object of class 'bird' missing from the label map")]
    e = {x["image_id"]: x for x in read_all(tmp_path / "out", "train")}[b"000005"]
    assert e["labels"].tolist() == [1, 2]  # dog=1, cat=2 as the given map says


def test_shards_identical_for_any_thread_count(devkit, tmp_path):
    contents = []
    for threads in (1, 3):
        out = tmp_path / ("out%d" % threads)
        run(devkit, out, "VOC2007,VOC2012", "VOC2007:test", train_shards=3, num_threads=threads)
        contents.append({n: (out / n).read_bytes() for n in sorted(os.listdir(out))})
    assert contents[0] == contents[1]
    assert len(contents[0]) == 5  # 3 train shards, 1 val shard, the label map


def test_rerun_removes_stale_shards_and_temporaries(devkit, tmp_path):
    out = tmp_path / "out"
    run(devkit, out, "VOC2007", "VOC2007:test", train_shards=3)
    (out / "train-00001-of-00003.tmp-999").write_bytes(b"half a shard")
    run(devkit, out, "VOC2007", "VOC2007:test", train_shards=2)
    assert sorted(os.listdir(out)) == ["label_map.pbtxt", "train-00000-of-00002",
                                       "train-00001-of-00002", "val-00000-of-00001"]


def test_interrupted_shard_leaves_no_complete_looking_file(tmp_path):
    path = str(tmp_path / "train-00000-of-00001")

    def dies_midway():
        yield b"record"
        raise KeyboardInterrupt  # as if the process were killed while writing

    with pytest.raises(KeyboardInterrupt):
        tfrecord.write_shard(path, dies_midway())
    assert os.listdir(tmp_path) == []
    assert tfrecord.write_shard(path, iter([b"a", b"b"])) == 2
    assert os.listdir(tmp_path) == ["train-00000-of-00001"]
