"""convert_coco_tfrecords.py --nokeep_empty reads COCO as the MLPerf SSD reference does (utils.py
COCODetection): an image leaves only when its JSON lists no annotation for it; one whose annotations
the converter drops as degenerate stays (an all-background record), as the reference keeps it."""

import json

from dataset import coco_convert
from test_coco_convert import _ann, _jpeg


def test_nokeep_empty_drops_images_without_any_annotation_in_the_json(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _jpeg(str(images / name))
    data = {"categories": [{"id": 3, "name": "car", "supercategory": "vehicle"}],
            "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},    # one box
                       {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},    # no annotation
                       {"id": 3, "file_name": "c.jpg", "width": 64, "height": 48}],   # a zero-width box only
            "annotations": [_ann(1, 1, [8, 4, 16, 12]), _ann(2, 3, [5, 5, 0, 10])]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    split = {"train": coco_convert.CocoSplit(str(path), str(images))}
    kept, _ = coco_convert.convert(split, str(tmp_path / "kept"), {"train": 1})
    dropped, _ = coco_convert.convert(split, str(tmp_path / "dropped"), {"train": 1}, keep_empty=False)
    assert (kept["train"].images, kept["train"].images_without_objects) == (3, 2)
    assert (dropped["train"].images, dropped["train"].empty_images_dropped) == (2, 1)
    assert dropped["train"].images_without_objects == 1          # c.jpg: its only box was degenerate
