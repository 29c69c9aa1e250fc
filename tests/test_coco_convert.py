"""The COCO converter: every bad case named and counted, records as the JSON says, deterministic, atomic."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dataset import coco, coco_convert, fields, label_map, reader, tfrecord

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_JSON = os.path.join(REPO, "dataset", "sample", "annotations", "instances_%s.json")
SAMPLE_IMAGES = os.path.join(REPO, "dataset", "sample", "JPEGImages")


def _jpeg(path, width=64, height=48):
    Image.new("RGB", (width, height), (90, 120, 150)).save(path, quality=90)


def _ann(i, image_id, bbox, category_id=3, area=None, iscrowd=0):
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": bbox[2] * bbox[3] if area is None else area, "iscrowd": iscrowd, "segmentation": []}


@pytest.fixture()
def tree(tmp_path):
    """A small COCO layout with one of every bad case."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        _jpeg(str(images / name))
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data = {
        "categories": [{"id": 3, "name": "car", "supercategory": "vehicle"},
                       {"id": 1, "name": "person", "supercategory": "person"}],
        "images": [{"id": 10, "file_name": "a.jpg", "width": 64, "height": 48},
                   {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},     # no annotations
                   {"id": 3, "file_name": "missing.jpg", "width": 64, "height": 48},
                   {"id": 4, "file_name": "corrupt.jpg", "width": 64, "height": 48},
                   {"id": 5, "file_name": "c.jpg", "width": 100, "height": 100},   # the file is 64 x 48
                   {"id": 6, "file_name": "d.jpg", "width": 64, "height": 48},
                   {"id": 6, "file_name": "d.jpg", "width": 64, "height": 48},     # duplicate id
                   {"id": 7, "file_name": "../a.jpg", "width": 64, "height": 48}],
        "annotations": [
            _ann(1, 10, [8, 4, 16, 12], category_id=3, area=150.5),
            _ann(2, 10, [0, 0, 32, 24], category_id=1, area=700, iscrowd=1),
            _ann(3, 10, [50, 40, 20, 10], category_id=1),       # partly outside -> [50, 40, 14, 8]
            _ann(4, 10, [5, 5, 0, 10]),                         # zero width
            _ann(5, 10, [70, 10, 5, 5]),                        # entirely outside
            _ann(6, 99, [1, 1, 5, 5]),                          # image 99 does not exist
            _ann(7, 6, [1, 1, 5, 5]),                           # of the duplicated image
            {"id": 8, "image_id": 10, "category_id": 1, "bbox": [1, 1, "x", 3]},   # malformed
        ]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path), str(images), data


def _kinds(entries):
    counts = {}
    for kind, _, _ in entries:
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _records(out, split):
    return {e[fields.IMAGE_ID].numpy().decode(): {k: v.numpy() for k, v in e.items()}
            for e in reader.read_split(out, split)}


def test_every_bad_case_is_named_and_counted_and_the_rest_is_exact(tree, tmp_path):
    path, images, _ = tree
    out = str(tmp_path / "out")
    results, category_map = coco_convert.convert({"train": coco_convert.CocoSplit(path, images)}, out,
                                                 {"train": 2}, num_threads=2)
    r = results["train"]
    assert _kinds(r.skipped) == {coco_convert.MALFORMED: 1, coco_convert.DUPLICATE_IMAGE_ID: 2,
                                 coco_convert.UNSAFE_FILE_NAME: 1, coco_convert.MISSING_IMAGE_ENTRY: 2,
                                 coco_convert.MISSING_IMAGE_FILE: 1, coco_convert.BAD_IMAGE: 1,
                                 coco_convert.SIZE_MISMATCH: 1}, r.skipped
    assert _kinds(r.repaired) == {coco_convert.CLIPPED_BOX: 1, coco_convert.NON_POSITIVE_BOX: 1,
                                  coco_convert.OUTSIDE_BOX: 1}, r.repaired
    assert (r.images, r.objects, r.crowd, r.images_without_objects) == (2, 3, 1, 1)
    # Contiguous ids in COCO id order: person (1) -> 1, car (3) -> 2.
    assert category_map.names == ("person", "car") and category_map.coco_ids == (1, 3)
    assert label_map.read_label_map(os.path.join(out, "label_map.pbtxt")) == ("person", "car")
    assert coco.find_category_map(out) == category_map
    records = _records(out, "train")
    assert sorted(records) == ["10", "2"]
    a = records["10"]
    # [8, 4, 16, 12] in 64 x 48 -> ymin 4/48, xmin 8/64, ymax 16/48, xmax 24/64; clipped [50, 40, 14, 8].
    np.testing.assert_allclose(a[fields.BOXES], [[4 / 48, 8 / 64, 16 / 48, 24 / 64], [0, 0, 0.5, 0.5],
                                                 [40 / 48, 50 / 64, 1, 1]], rtol=1e-6)
    np.testing.assert_array_equal(a[fields.LABELS], [2, 1, 1])
    np.testing.assert_array_equal(a[fields.IS_CROWD], [False, True, False])
    # The annotation's area, not the box's (clipping does not change it either).
    np.testing.assert_allclose(a[fields.AREA], [150.5, 700, 200])
    assert records["2"][fields.BOXES].shape == (0, 4)
    summary = coco_convert.format_summary(results, category_map)
    for kind in list(_kinds(r.skipped)) + list(_kinds(r.repaired)):
        assert kind in summary
    assert "missing.jpg" in summary and "annotation 6: image id 99" in summary
    assert "a.jpg: annotation 3 bbox [50.0, 40.0, 20.0, 10.0] in the 64x48 image" in summary


def test_unknown_category_stops_before_writing_unless_skipped(tree, tmp_path):
    path, images, data = tree
    data["annotations"].append(_ann(20, 10, [1, 1, 4, 4], category_id=2))
    with open(path, "w") as f:
        json.dump(data, f)
    out = tmp_path / "out"
    with pytest.raises(coco_convert.UnknownCategoryError, match="1 annotations.*category_id 2"):
        coco_convert.convert({"train": coco_convert.CocoSplit(path, images)}, str(out), {"train": 1})
    assert not out.exists()
    results, _ = coco_convert.convert({"train": coco_convert.CocoSplit(path, images)}, str(out),
                                      {"train": 1}, skip_unknown=True)
    assert _kinds(results["train"].repaired)[coco_convert.UNKNOWN_CATEGORY] == 1


def test_empty_images_can_be_dropped(tree, tmp_path):
    path, images, _ = tree
    results, _ = coco_convert.convert({"train": coco_convert.CocoSplit(path, images)}, str(tmp_path / "o"),
                                      {"train": 1}, keep_empty=False)
    assert results["train"].images == 1 and results["train"].empty_images_dropped >= 1


def test_sample_records_match_its_json_and_are_identical_for_any_thread_count(tmp_path):
    splits = {name: coco_convert.CocoSplit(SAMPLE_JSON % name, SAMPLE_IMAGES) for name in ("train", "val")}
    contents = []
    for threads in (1, 3):
        out = str(tmp_path / ("t%d" % threads))
        results, category_map = coco_convert.convert(splits, out, {"train": 3, "val": 2}, num_threads=threads)
        contents.append({n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))})
    assert contents[0] == contents[1]
    assert sorted(contents[0]) == ["coco_category_map.json", "label_map.pbtxt", "train-00000-of-00003",
                                   "train-00001-of-00003", "train-00002-of-00003", "val-00000-of-00002",
                                   "val-00001-of-00002"]
    with open(SAMPLE_JSON % "val") as f:
        data = json.load(f)
    assert results["val"].skipped == [] and results["val"].repaired == []
    assert results["val"].images == len(data["images"]) == 80
    assert results["val"].objects == len(data["annotations"])
    records = _records(out, "val")
    assert sorted(records, key=int) == [str(i["id"]) for i in data["images"]]
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(str(a["image_id"]), []).append(a)
    for image in data["images"]:
        rec, anns = records[str(image["id"])], by_image.get(str(image["id"]), [])
        assert rec[fields.FILENAME].decode() == image["file_name"]
        np.testing.assert_allclose(coco.normalized_to_coco_xywh(rec[fields.BOXES], image["width"], image["height"]),
                                   np.array([a["bbox"] for a in anns]).reshape(-1, 4), atol=1e-3)
        np.testing.assert_array_equal(category_map.to_coco_ids(rec[fields.LABELS]) if anns else [],
                                      [a["category_id"] for a in anns])
        np.testing.assert_array_equal(rec[fields.AREA], [a["area"] for a in anns])
        np.testing.assert_array_equal(rec[fields.IS_CROWD], [bool(a["iscrowd"]) for a in anns])


def test_failure_part_way_leaves_the_previous_output_untouched(tree, tmp_path, monkeypatch):
    path, images, _ = tree
    out = tmp_path / "out"
    split = {"train": coco_convert.CocoSplit(path, images)}
    coco_convert.convert(split, str(out), {"train": 2})
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    real = tfrecord.write_shard
    calls = []

    def failing(shard_path, serialized):
        calls.append(shard_path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(shard_path, serialized)

    monkeypatch.setattr(tfrecord, "write_shard", failing)
    with pytest.raises(OSError, match="disk full"):
        coco_convert.convert(split, str(out), {"train": 3}, num_threads=1)
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before  # no staging left either


def _script(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(REPO, "convert_coco_tfrecords.py"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_script_defaults_convert_the_sample_and_bad_json_is_one_line(tmp_path):
    out = tmp_path / "sample"
    result = _script("--output_directory", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train: 250 images" in result.stdout and "val: 80 images" in result.stdout
    assert coco.find_category_map(str(out)).coco_ids == (1, 3, 4, 7, 9, 12, 14, 18)
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 2, "height": 2}],
                                    "annotations": [{"id": 1, "image_id": 1, "caption": "x"}],
                                    "categories": []}))
    bad = _script("--train_annotations", str(captions), "--validation_annotations", "",
                  "--output_directory", str(tmp_path / "bad"))
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("convert_coco_tfrecords.py: error: ")]
    assert len(errors) == 1 and "captions.json: not a COCO instances file" in errors[0], bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
