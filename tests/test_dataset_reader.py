"""tfrecord.build_example -> shard -> reader.parse_example reproduces every field."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dataset import fields, reader, tfrecord


def _record(image_id, num_objects, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    # [N, (min, max), (y, x)] sorted along the min/max axis reshapes to [ymin, xmin, ymax, xmax].
    corners = np.sort(rng.uniform(0, 1, (num_objects, 2, 2)), axis=1)
    boxes = corners.reshape(num_objects, 4).astype(np.float32)
    return tfrecord.ImageRecord(
        image_id=image_id, filename=image_id + ".jpg", jpeg=out.getvalue(), width=53, height=37,
        boxes=boxes, labels=tuple(int(v) for v in rng.integers(1, 21, num_objects)),
        class_names=("c",) * num_objects,
        difficult=tuple(bool(v) for v in rng.integers(0, 2, num_objects)),
        truncated=tuple(bool(v) for v in rng.integers(0, 2, num_objects)),
        poses=("Unspecified",) * num_objects)


def _parse(record):
    with tf.device("/CPU:0"):
        parsed = reader.parse_example(tfrecord.build_example(record).SerializeToString())
        return {k: v.numpy() for k, v in parsed.items()}


@pytest.mark.parametrize("num_objects", [0, 1, 7])
def test_round_trip_every_field(num_objects):
    record = _record("2008_000123", num_objects, seed=num_objects)
    e = _parse(record)
    np.testing.assert_array_equal(e[fields.BOXES], record.boxes)
    assert e[fields.BOXES].shape == (num_objects, 4) and e[fields.BOXES].dtype == np.float32
    assert e[fields.LABELS].tolist() == list(record.labels) and e[fields.LABELS].dtype == np.int32
    assert e[fields.DIFFICULT].tolist() == list(record.difficult)
    assert e[fields.TRUNCATED].tolist() == list(record.truncated)
    assert (e[fields.IMAGE_ID], e[fields.FILENAME]) == (b"2008_000123", b"2008_000123.jpg")
    assert (e[fields.HEIGHT], e[fields.WIDTH]) == (37, 53)
    np.testing.assert_array_equal(e[fields.IMAGE], np.asarray(Image.open(io.BytesIO(record.jpeg))))


def test_example_carries_the_object_detection_api_keys():
    record = _record("x", 2, seed=3)
    feature = tfrecord.build_example(record).features.feature
    assert feature[fields.IMAGE_FORMAT].bytes_list.value == [b"jpeg"]
    assert feature[fields.OBJECT_TEXT].bytes_list.value == [b"c", b"c"]
    assert feature[fields.OBJECT_VIEW].bytes_list.value == [b"Unspecified", b"Unspecified"]
    assert feature[fields.OBJECT_IS_CROWD].int64_list.value == [0, 0]
    b = record.boxes
    np.testing.assert_allclose(feature[fields.OBJECT_AREA].float_list.value,
                               (b[:, 2] - b[:, 0]) * 37 * (b[:, 3] - b[:, 1]) * 53, rtol=1e-5)
    assert len(feature[fields.IMAGE_KEY_SHA256].bytes_list.value[0]) == 64


def test_hand_checked_box_order():
    record = _record("x", 1, seed=0)
    record = tfrecord.ImageRecord(**{**record.__dict__, "boxes": np.array([[0.1, 0.2, 0.3, 0.4]],
                                                                          np.float32)})
    feature = tfrecord.build_example(record).features.feature
    assert feature[fields.OBJECT_YMIN].float_list.value == pytest.approx([0.1])
    assert feature[fields.OBJECT_XMIN].float_list.value == pytest.approx([0.2])
    assert feature[fields.OBJECT_YMAX].float_list.value == pytest.approx([0.3])
    assert feature[fields.OBJECT_XMAX].float_list.value == pytest.approx([0.4])
    np.testing.assert_allclose(_parse(record)[fields.BOXES], [[0.1, 0.2, 0.3, 0.4]])


def test_shard_files_and_dataset_map(tmp_path):
    for i in range(3):
        tfrecord.write_shard(str(tmp_path / tfrecord.shard_name("train", i, 3)),
                             [tfrecord.build_example(_record("id%d" % i, i, i)).SerializeToString()])
    (tmp_path / "train-00000-of-00003.tmp-12").write_bytes(b"")
    files = reader.shard_files(str(tmp_path), "train")
    assert [f.rsplit("/", 1)[1] for f in files] == ["train-00000-of-00003", "train-00001-of-00003",
                                                     "train-00002-of-00003"]
    with tf.device("/CPU:0"):
        ids = [e[fields.IMAGE_ID].numpy() for e in reader.read_split(str(tmp_path), "train")]
    assert ids == [b"id0", b"id1", b"id2"]
    with pytest.raises(ValueError, match="no val shards"):
        reader.shard_files(str(tmp_path), "val")
