"""dataset/coco.py: COCO's box convention, the category id map, and the instances JSON parser."""

import dataclasses
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tensorflow as tf

from dataset import coco, fields, make_sample, reader, tfrecord, voc_boxes


def test_coco_box_to_normalized_by_hand():
    # x 40, y 10, w 80, h 40 in a 200 x 100 image: xmin 0.2, ymin 0.1, xmax 0.6, ymax 0.5.
    np.testing.assert_allclose(coco.coco_xywh_to_normalized([[40, 10, 80, 40]], 200, 100),
                               [[0.1, 0.2, 0.5, 0.6]], rtol=1e-6)
    # The whole image is [0, 0, W, H]: no +1, unlike VOC's (1, 1, W, H).
    np.testing.assert_allclose(coco.coco_xywh_to_normalized([[0, 0, 640, 480]], 640, 480), [[0, 0, 1, 1]])
    np.testing.assert_allclose(voc_boxes.voc_pixels_to_normalized([[1, 1, 640, 480]], 640, 480), [[0, 0, 1, 1]])


def test_round_trip_on_random_boxes_both_ways():
    rng = np.random.default_rng(0)
    widths, heights = rng.integers(1, 1000, 50), rng.integers(1, 1000, 50)
    xy = rng.uniform(0, 1, (50, 2)) * np.stack([widths, heights], 1)
    wh = rng.uniform(0.01, 1, (50, 2)) * (np.stack([widths, heights], 1) - xy)
    xywh = np.concatenate([xy, wh], axis=1)
    back = coco.normalized_to_coco_xywh(coco.coco_xywh_to_normalized(xywh, widths, heights), widths, heights)
    np.testing.assert_allclose(back, xywh, atol=1e-3)  # normalized boxes are stored as float32
    mins = rng.uniform(0, 0.5, (50, 2))
    boxes = np.concatenate([mins, mins + rng.uniform(0.01, 0.5, (50, 2))], axis=1).astype(np.float32)
    again = coco.coco_xywh_to_normalized(coco.normalized_to_coco_xywh(boxes, widths, heights), widths, heights)
    np.testing.assert_allclose(again, boxes, atol=1e-6)


def test_category_map_contiguous_in_coco_id_order():
    categories = [{"id": 90, "name": "toothbrush", "supercategory": "indoor"},
                  {"id": 1, "name": "person", "supercategory": "person"},
                  {"id": 13, "name": "stop sign", "supercategory": "outdoor"}]
    m = coco.CategoryMap.from_categories(categories)
    assert m.names == ("person", "stop sign", "toothbrush") and m.coco_ids == (1, 13, 90)
    np.testing.assert_array_equal(m.contiguous_ids([13, 90, 1, 12, 0, 1000, -3]), [2, 3, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(m.to_coco_ids([1, 2, 3]), [1, 13, 90])


def test_category_map_file_round_trip(tmp_path):
    m = coco.CategoryMap((1, 3, 18), ("a", "b c", "d"), ("x", "y", "x"))
    coco.write_category_map(str(tmp_path), m)
    assert coco.find_category_map(str(tmp_path)) == m
    assert coco.find_category_map(str(tmp_path / "nowhere")) is None


def _write(tmp_path, data, name="instances.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


GOOD = {
    "info": {"description": "x"}, "licenses": [{"id": 1, "name": "l", "url": "u"}],
    "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 3, "name": "car", "supercategory": "vehicle"}],
    "images": [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48, "license": 1},
               {"id": 5, "file_name": "b.jpg", "width": 32, "height": 32}],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1.5, 2, 10, 20.25], "area": 150.5, "iscrowd": 0,
         "segmentation": [[1.5, 2, 11.5, 2, 11.5, 22.25]]},
        {"id": 2, "image_id": 5, "category_id": 1, "bbox": [0, 0, 32, 32], "area": 900, "iscrowd": 1,
         "segmentation": {"counts": [0, 1024], "size": [32, 32]}},
    ]}


def test_load_instances_flattens_the_fields_detection_uses(tmp_path):
    inst = coco.load_instances(_write(tmp_path, GOOD))
    np.testing.assert_array_equal(inst.image_ids, [7, 5])
    assert inst.file_names == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(inst.widths, [64, 32])
    np.testing.assert_array_equal(inst.ann_image_ids, [7, 5])
    np.testing.assert_array_equal(inst.ann_category_ids, [3, 1])
    np.testing.assert_array_equal(inst.ann_boxes, [[1.5, 2, 10, 20.25], [0, 0, 32, 32]])
    np.testing.assert_array_equal(inst.ann_areas, [150.5, 900])
    np.testing.assert_array_equal(inst.ann_is_crowd, [False, True])
    assert [c["name"] for c in inst.categories] == ["person", "car"] and inst.malformed == []


def test_malformed_entries_are_named_not_fatal(tmp_path):
    data = json.loads(json.dumps(GOOD))
    data["annotations"] += [
        {"id": 3, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3]},
        {"id": 4, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, "4"]},
        {"id": 5, "image_id": "7", "category_id": 1, "bbox": [1, 2, 3, 4]},
        {"id": 6, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 2},
        {"id": 8, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4], "area": -1},
        {"id": 9, "category_id": 1},
    ]
    data["images"].append({"id": 9, "file_name": "c.jpg", "width": 0, "height": 10})
    inst = coco.load_instances(_write(tmp_path, data))
    assert len(inst.ann_image_ids) == 2 and len(inst.image_ids) == 2
    what = [w for w, _ in inst.malformed]
    # In file order (images come first in this file); an entry without bbox is listed after parsing.
    assert what == ["image 9", "annotation 3", "annotation 4", "annotation 5", "annotation 6",
                    "annotation 8", "annotation 9"], inst.malformed


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a COCO instances file"),
    (json.dumps({"images": [], "annotations": []}), "needs lists images, annotations, categories"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 1, "height": 1}],
                 "annotations": [{"id": 1, "image_id": 1, "caption": "a dog"}],
                 "categories": [{"id": 1, "name": "x"}]}), "captions"),
    (json.dumps(dict(GOOD, categories=[])), "categories must be a non-empty list"),
    (json.dumps(dict(GOOD, categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])), "unique"),
])
def test_not_instances_is_one_clear_error(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(coco.NotInstancesError, match=message) as error:
        coco.load_instances(path)
    assert str(error.value).startswith(path) and "\n" not in str(error.value)


# --- the COCO-format sample and the records' new keys ----------------------------------------------

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dataset", "sample")


@pytest.mark.slow
def test_committed_sample_json_is_what_make_sample_writes():
    with open(os.path.join(SAMPLE_DIR, "annotations", "instances_val.json")) as f:
        assert f.read() == make_sample.coco_instances_text("val")
    with open(os.path.join(SAMPLE_DIR, "annotations", "instances_train.json")) as f:
        train = json.load(f)
    for number in (1, 17, 250):
        image, anns = make_sample.coco_entries(number)
        assert image in train["images"]
        assert [dict(a, id=0) for a in train["annotations"] if a["image_id"] == number] == [
            dict(a, id=0) for a in anns]


def test_sample_json_boxes_are_the_voc_boxes_without_the_plus_one():
    with open(os.path.join(SAMPLE_DIR, "annotations", "instances_val.json")) as f:
        data = json.load(f)
    names = {c["id"]: c["name"] for c in data["categories"]}
    image = data["images"][0]
    root = ET.parse(os.path.join(SAMPLE_DIR, "Annotations", image["file_name"][:-4] + ".xml")).getroot()
    voc_objects = [(o.find("name").text, [int(o.find("bndbox").find(t).text)
                                          for t in ("xmin", "ymin", "xmax", "ymax")],
                    o.find("difficult").text == "1") for o in root.findall("object")]
    anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
    assert len(anns) == len(voc_objects) > 0
    for ann, (name, (xmin, ymin, xmax, ymax), difficult) in zip(anns, voc_objects):
        assert names[ann["category_id"]] == name and ann["iscrowd"] == int(difficult)
        assert ann["bbox"] == [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
        # Both conventions give the same normalized box.
        np.testing.assert_allclose(
            coco.coco_xywh_to_normalized([ann["bbox"]], image["width"], image["height"]),
            voc_boxes.voc_pixels_to_normalized([[xmin, ymin, xmax, ymax]], image["width"], image["height"]))
        # The visible pixels, at most the box's area.
        assert 0 < ann["area"] <= ann["bbox"][2] * ann["bbox"][3]


def test_records_without_crowd_or_area_keys_still_parse():
    jpeg = tf.io.encode_jpeg(tf.zeros([10, 20, 3], tf.uint8)).numpy()
    record = tfrecord.ImageRecord(image_id="x", filename="x.jpg", jpeg=jpeg, width=20, height=10,
                                  boxes=np.array([[0.0, 0.0, 0.5, 0.5], [0.1, 0.2, 0.3, 0.7]], np.float32),
                                  labels=(1, 2), class_names=("a", "b"), difficult=(0, 1), truncated=(0, 0),
                                  poses=("", ""))
    example = tfrecord.build_example(record)
    parsed = reader.parse_example(example.SerializeToString())
    # VOC records store the box's area in pixels: 0.5 * 10 * 0.5 * 20 = 50, 0.2 * 10 * 0.5 * 20 = 20.
    np.testing.assert_allclose(parsed[fields.AREA].numpy(), [50, 20], rtol=1e-6)
    for key in (fields.OBJECT_AREA, fields.OBJECT_IS_CROWD):   # as written before these keys existed
        del example.features.feature[key]
    parsed = reader.parse_example(example.SerializeToString())
    np.testing.assert_array_equal(parsed[fields.IS_CROWD].numpy(), [False, False])
    np.testing.assert_allclose(parsed[fields.AREA].numpy(), [50, 20], rtol=1e-6)
    crowd = dataclasses.replace(record, is_crowd=(1, 0), areas=np.array([3.5, 7.0]))
    parsed = reader.parse_example(tfrecord.build_example(crowd).SerializeToString())
    np.testing.assert_array_equal(parsed[fields.IS_CROWD].numpy(), [True, False])
    np.testing.assert_allclose(parsed[fields.AREA].numpy(), [3.5, 7.0])
