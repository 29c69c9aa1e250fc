"""dataset/yolo.py and convert_yolo_tfrecords.py: YOLO / Ultralytics layout -> the same records."""

import glob
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dataset import label_map, make_sample, yolo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_YAML = os.path.join(REPO, "dataset", "sample", "yolo", "data.yaml")


# --- one label file ---------------------------------------------------------------------------------
def test_a_box_line_is_centre_size_normalized():
    boxes, labels, notes = yolo.parse_labels("2 0.5 0.25 0.2 0.1\n\n", 3)
    np.testing.assert_allclose(boxes, [[0.2, 0.4, 0.3, 0.6]], atol=1e-7)   # yxyx: cy -+ h/2, cx -+ w/2
    assert labels == (3,) and notes == []                                     # YOLO id 2 -> record id 3


def test_a_polygon_line_becomes_its_bounding_box():
    # a triangle (0.1, 0.2) (0.5, 0.9) (0.3, 0.4); an oriented box as 4 corners is the same case
    boxes, labels, notes = yolo.parse_labels("0 0.1 0.2 0.5 0.9 0.3 0.4\n1 0.2 0.1 0.4 0.2 0.3 0.5 0.1 0.4\n", 2)
    np.testing.assert_allclose(boxes, [[0.2, 0.1, 0.9, 0.5], [0.1, 0.1, 0.5, 0.4]], atol=1e-7)
    assert labels == (1, 2) and [kind for kind, _ in notes] == [yolo.POLYGON, yolo.POLYGON]


def test_repairs_clip_zero_area_and_duplicates():
    text = "0 0.05 0.5 0.2 0.2\n0 0.5 0.5 0.0 0.3\n1 0.5 0.5 0.4 0.4\n1 0.5 0.5 0.4 0.4\n"
    boxes, labels, notes = yolo.parse_labels(text, 2, where="a.txt")
    np.testing.assert_allclose(boxes, [[0.4, 0.0, 0.6, 0.15], [0.3, 0.3, 0.7, 0.7]], atol=1e-7)
    assert labels == (1, 2)
    assert notes == [(yolo.CLIPPED, "a.txt line 1"), (yolo.ZERO_AREA, "a.txt line 2"),
                     (yolo.DUPLICATE_LINE, "a.txt line 4")]


def test_six_decimal_rounding_at_the_border_is_no_repair():
    boxes, _, notes = yolo.parse_labels("0 0.900000 0.5 0.200001 0.2\n", 1)   # right edge 1.0000005
    assert notes == [] and boxes[0, 3] == 1.0


@pytest.mark.parametrize("line, expected", [
    ("0 0.5 0.5 0.2", "4 fields"),                       # too few
    ("0 0.5 0.5 0.2 0.2 0.9", "6 fields"),               # x y w h + confidence or angle
    ("0 0.1 0.1 0.2 0.2 0.3 0.3 0.4", "8 fields"),       # odd coordinates
    ("0 0.1 0.1 0.2 0.2", None),                         # fine
    ("cat 0.5 0.5 0.2 0.2", "class id 'cat' is not a number"),
    ("1.5 0.5 0.5 0.2 0.2", "not a whole number"),
    ("-1 0.5 0.5 0.2 0.2", "not a whole number"),
    ("0 nan 0.5 0.2 0.2", "not finite"),
    ("0 0.5 inf 0.2 0.2", "not finite"),
    ("0 320 240 64 48", "outside [0, 1]"),               # pixel coordinates
    ("0 0.5 0.5 -0.2 0.2", "outside [0, 1]"),
    ("0 1.02 0.5 0.2 0.2", "outside [0, 1]"),
    ("0 1.005 0.5 0.2 0.2", None),                       # within Ultralytics' 1% tolerance: clipped
])
def test_bad_lines_skip_the_image(line, expected):
    if expected is None:
        yolo.parse_labels(line, 1)
        return
    with pytest.raises(yolo.BadLabel, match=expected.replace("[", r"\[").replace("]", r"\]")):
        yolo.parse_labels("0 0.5 0.5 0.1 0.1\n" + line, 1)


def test_unknown_class_ids_are_fatal_or_dropped():
    with pytest.raises(yolo.UnknownClassError, match="l.txt line 1: class id 3 but names has 3 classes"):
        yolo.parse_labels("3 0.5 0.5 0.1 0.1\n", 3, where="l.txt")
    boxes, labels, notes = yolo.parse_labels("3 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1 0.1\n", 3, skip_unknown=True)
    assert labels == (1,) and notes[0][0] == yolo.UNKNOWN_CLASS


def test_label_path_is_ultralytics_rule():
    assert yolo.label_path("/d/images/train/a.b.jpg") == "/d/labels/train/a.b.txt"
    assert yolo.label_path("/images/d/images/x.png") == "/images/d/labels/x.txt"   # the last /images/
    assert yolo.label_path("/d/photos/x.jpg") == "/d/photos/x.txt"                 # none: beside the image


# --- data.yaml ---------------------------------------------------------------------------------------
def _yaml(tmp_path, text):
    path = tmp_path / "data.yaml"
    path.write_text(text)
    return str(path)


def test_data_yaml_names_as_list_or_dict(tmp_path):
    (tmp_path / "images").mkdir()
    assert yolo.read_data_yaml(_yaml(tmp_path, "train: images\nnames: [a, b]\n")).class_names == ("a", "b")
    data = yolo.read_data_yaml(_yaml(tmp_path, "path: .\nval: images\nnc: 2\nnames: {1: b, 0: a}\n"))
    assert data.class_names == ("a", "b") and data.splits == {"val": [str(tmp_path / "images")]}


@pytest.mark.parametrize("text, expected", [
    ("train: images\n", "needs `names`"),
    ("train: images\nnames: {0: a, 2: c}\n", "without gaps"),
    ("train: images\nnc: 3\nnames: [a, b]\n", "nc is 3 but names lists 2"),
    ("names: [a]\n", "names no split"),
    ("train: nowhere\nnames: [a]\n", "train source"),
    ("train: [images\n", "not readable as YAML"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_bad_data_yaml_is_one_line(tmp_path, text, expected):
    (tmp_path / "images").mkdir()
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        yolo.read_data_yaml(_yaml(tmp_path, text))
    assert expected in str(error.value) and "\n" not in str(error.value)


# --- whole datasets -----------------------------------------------------------------------------------
def _image(path, size=(40, 30), color=(200, 30, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=90)


def _label(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def folder_dataset(tmp_path):
    """Folder splits with one of each case: a good image (its label file as Windows tools write it), a
    negative, a bad label, an orphan label, two images of one stem, a corrupt image, a polygon."""
    root = tmp_path / "set"
    for name in ("good", "negative", "badlabel", "twin", "corrupt", "poly"):
        _image(str(root / "images" / "train" / f"{name}.jpg"))
    _image(str(root / "images" / "train" / "twin.png"))
    (root / "images" / "train" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    _label(str(root / "labels" / "train" / "good.txt"), "\ufeff0 0.5 0.5 0.5 0.5\r\n")   # a BOM, CRLF
    _label(str(root / "labels" / "train" / "badlabel.txt"), "0 0.5 0.5 0.5\n")
    _label(str(root / "labels" / "train" / "orphan.txt"), "0 0.5 0.5 0.5 0.5\n")
    _label(str(root / "labels" / "train" / "classes.txt"), "a\nb\n")
    _label(str(root / "labels" / "train" / "twin.txt"), "1 0.5 0.5 0.5 0.5\n")
    _label(str(root / "labels" / "train" / "corrupt.txt"), "1 0.5 0.5 0.5 0.5\n")
    _label(str(root / "labels" / "train" / "poly.txt"), "1 0.1 0.1 0.9 0.1 0.5 0.8\n")
    _image(str(root / "images" / "val" / "v.jpg"))
    _label(str(root / "labels" / "val" / "v.txt"), "1 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    return str(root / "data.yaml")


def _records(data_dir, split):
    out = []
    for path in tfrecord_files(data_dir, split):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            f = tf.train.Example.FromString(raw).features.feature
            out.append({key: f[key] for key in f})
    return out


def tfrecord_files(data_dir, split):
    return sorted(glob.glob(os.path.join(data_dir, f"{split}-*")))


def test_every_case_of_a_folder_dataset(folder_dataset, tmp_path):
    out = str(tmp_path / "records")
    results = yolo.convert(yolo.read_data_yaml(folder_dataset), out, {"train": 2, "val": 1}, num_threads=2)
    train = results["train"]
    kinds = sorted((kind, os.path.basename(where)) for kind, where, _ in train.skipped)
    assert kinds == sorted([(yolo.BAD_IMAGE, "corrupt.jpg"), (yolo.BAD_LABEL, "badlabel.txt"),
                            (yolo.DUPLICATE_STEM, "twin.jpg"), (yolo.DUPLICATE_STEM, "twin.png"),
                            (yolo.ORPHAN_LABEL, "orphan.txt")])
    assert (train.images, train.objects, train.images_without_objects) == (3, 2, 1)   # good, negative, poly
    assert [kind for kind, _ in train.repaired] == [yolo.POLYGON]
    records = {r["image/source_id"].bytes_list.value[0].decode(): r for r in _records(out, "train")}
    assert sorted(records) == ["good", "negative", "poly"]
    np.testing.assert_allclose(records["poly"]["image/object/bbox/ymin"].float_list.value, [0.1], atol=1e-7)
    np.testing.assert_allclose(records["poly"]["image/object/bbox/ymax"].float_list.value, [0.8], atol=1e-7)
    assert list(records["poly"]["image/object/class/label"].int64_list.value) == [2]
    assert label_map.read_label_map(os.path.join(out, "label_map.pbtxt")) == ("a", "b")
    assert results["val"].images == 1


def test_output_is_byte_identical_and_atomic(folder_dataset, tmp_path):
    data = yolo.read_data_yaml(folder_dataset)
    digests = []
    for threads in (1, 3):
        out = str(tmp_path / f"out{threads}")
        yolo.convert(data, out, {"train": 2, "val": 1}, num_threads=threads)
        digests.append({os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()
                        for p in glob.glob(os.path.join(out, "*"))})
    assert digests[0] == digests[1] and len(digests[0]) == 4   # 2 train shards, 1 val, the label map
    # An unknown class id is found before anything is written: the previous output stays as it was.
    _label(os.path.join(os.path.dirname(folder_dataset), "labels", "val", "v.txt"), "2 0.5 0.5 0.2 0.2\n")
    out = str(tmp_path / "out1")
    with pytest.raises(yolo.UnknownClassError, match="v.txt line 1: class id 2"):
        yolo.convert(data, out, {"train": 2, "val": 1})
    assert {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in glob.glob(os.path.join(out, "*"))} == digests[0]
    assert sorted(os.listdir(tmp_path)) == ["out1", "out3", "set"]   # no staging folder left


def test_the_sample_in_yolo_layout_gives_the_voc_records(sample_records, tmp_path):
    out = str(tmp_path / "yolo")
    results = yolo.convert(yolo.read_data_yaml(SAMPLE_YAML), out, {"train": 4, "val": 2}, num_threads=2)
    assert [len(r.skipped) + len(r.repaired) for r in results.values()] == [0, 0]
    assert label_map.read_label_map(os.path.join(out, "label_map.pbtxt")) == make_sample.CLASS_NAMES
    for split in ("train", "val"):
        ours = {r["image/source_id"].bytes_list.value[0]: r for r in _records(out, split)}
        theirs = {r["image/source_id"].bytes_list.value[0]: r for r in _records(sample_records, split)}
        assert sorted(ours) == sorted(theirs) and len(ours) == (250 if split == "train" else 80)
        for key, record in ours.items():
            assert record["image/encoded"] == theirs[key]["image/encoded"]
            for name in ("image/object/class/label", "image/object/class/text"):
                assert record[name] == theirs[key][name], (key, name)
            for side in ("ymin", "xmin", "ymax", "xmax"):
                name = f"image/object/bbox/{side}"
                np.testing.assert_allclose(record[name].float_list.value, theirs[key][name].float_list.value,
                                           atol=1e-6)
    # the shard layout is the VOC converter's too: same ids in the same shards
    for ours_path, theirs_path in zip(tfrecord_files(out, "train"), tfrecord_files(sample_records, "train")):
        assert os.path.basename(ours_path) == os.path.basename(theirs_path)
        assert ([tf.train.Example.FromString(r).features.feature["image/source_id"]
                 for r in tf.data.TFRecordDataset(ours_path).as_numpy_iterator()]
                == [tf.train.Example.FromString(r).features.feature["image/source_id"]
                    for r in tf.data.TFRecordDataset(theirs_path).as_numpy_iterator()])


def test_regenerating_the_yolo_sample_reproduces_the_committed_files(tmp_path):
    make_sample.write_yolo_sample(str(tmp_path), numbers=[1, 251])
    committed = os.path.join(REPO, "dataset", "sample", "yolo")
    for name in ("data.yaml", "train.txt", "val.txt", "labels/000001.txt", "labels/000251.txt"):
        assert (tmp_path / "yolo" / name).read_text() == open(os.path.join(committed, name)).read(), name
    assert os.readlink(os.path.join(committed, "images")) == os.path.join("..", "JPEGImages")


@pytest.mark.slow   # starts the script (the walk-through, tests/test_your_own_data.py, runs a whole conversion)
def test_a_missing_data_yaml_is_one_line_before_anything_loads(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "convert_yolo_tfrecords.py"),
                             "--data_yaml", str(tmp_path / "none.yaml")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "convert_yolo_tfrecords.py: error: flag --data_yaml=%s: --data_yaml: no such file (a YOLO dataset "
        "is described by its data.yaml) (see --helpfull)" % (tmp_path / "none.yaml")]
