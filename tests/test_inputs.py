"""Input functions on the converted sample: shapes, determinism, every val image once, sharding."""

import numpy as np
import pytest
import tensorflow as tf

from dataset import fields, reader, tfrecord
from model import anchors as anchors_lib
from model import presets, targets
from preprocessing import inputs
from preprocessing.augment import AugmentConfig
from preprocessing.geometric import CropConfig, ZoomOutConfig
from preprocessing.photometric import PhotometricConfig


# Every random step off: the crop keeps the whole image when it has no patch samplers.
NO_AUGMENTATION = AugmentConfig(
    photometric=PhotometricConfig(brightness_prob=0.0, contrast_prob=0.0, saturation_prob=0.0,
                                  hue_prob=0.0),
    zoom_out=ZoomOutConfig(prob=0.0), crop=CropConfig(min_ious=()), flip_prob=0.0)


@pytest.fixture(scope="module")
def setup(sample_records):
    config = presets.get("ssd300_vgg16", reader.num_classes(f"{sample_records}/label_map.pbtxt"))
    return sample_records, config, anchors_lib.generate(config)


def _first_batch(data_dir, config, anchors, batch, **kwargs):
    ds = inputs.train_input_fn(data_dir, config, anchors, batch, input_config=inputs.TrainInputConfig(**kwargs))
    return next(iter(ds))


def test_train_batch_shapes_and_ranges(setup):
    data_dir, config, anchors = setup
    features, labels = _first_batch(data_dir, config, anchors, 4)
    assert features.shape == (4, 300, 300, 3) and features.dtype == tf.uint8
    assert labels[fields.CLS_TARGETS].shape == (4, 8732)
    assert labels[fields.BOX_TARGETS].shape == (4, 8732, 4)
    assert labels[fields.NUM_POSITIVES].shape == (4,)
    # 0-255 RGB as uint8 (the model subtracts the mean): the range is the dtype's, so check it is used.
    assert features.numpy().max() > 200 and features.numpy().min() < 50
    cls = labels[fields.CLS_TARGETS].numpy()
    assert cls.min() >= 0 and cls.max() <= config.num_classes
    np.testing.assert_array_equal((cls > 0).sum(axis=1), labels[fields.NUM_POSITIVES].numpy())
    assert np.isfinite(labels[fields.BOX_TARGETS].numpy()).all()


@pytest.mark.slow
def test_same_seed_same_batch_other_seed_other_batch(setup):
    data_dir, config, anchors = setup
    a = _first_batch(data_dir, config, anchors, 2, seed=3)
    b = _first_batch(data_dir, config, anchors, 2, seed=3)
    c = _first_batch(data_dir, config, anchors, 2, seed=4)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1][fields.CLS_TARGETS].numpy(), b[1][fields.CLS_TARGETS].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_without_augmentation_targets_match_the_records(setup):
    """No augmentation and no shuffle: positives of the first image are the ones its own boxes give."""
    data_dir, config, anchors = setup
    features, labels = _first_batch(data_dir, config, anchors, 8, augment=NO_AUGMENTATION, shuffle_buffer=1,
                                    cycle_length=1)
    files = reader.shard_files(data_dir, "train")
    # With a one-element shuffle buffer and one shard at a time the first element is a shard's first
    # record; the file order itself is shuffled by seed, so find which shard came first.
    firsts = [next(iter(tf.data.TFRecordDataset(f).map(reader.parse_example))) for f in files]
    resized = [inputs.to_uint8(inputs.resize(e[fields.IMAGE], config)).numpy() for e in firsts]
    index = int(np.argmin([np.abs(r.astype(int) - features[0].numpy()).max() for r in resized]))
    np.testing.assert_array_equal(resized[index], features[0].numpy())
    example = firsts[index]
    boxes = example[fields.BOXES][None]
    expected = targets.encode_targets(boxes, example[fields.LABELS][None],
                                      tf.ones(tf.shape(boxes)[:2], tf.bool), anchors, config)
    np.testing.assert_array_equal(labels[fields.CLS_TARGETS][0].numpy(),
                                  expected[fields.CLS_TARGETS][0].numpy())


def test_exclude_difficult_drops_difficult_boxes(setup):
    data_dir, config, anchors = setup
    records = list(reader.read_split(data_dir, "train"))
    n_difficult = sum(int(tf.reduce_sum(tf.cast(e[fields.DIFFICULT], tf.int32))) for e in records)
    assert n_difficult > 0  # the sample has difficult boxes, so the flag has something to drop
    example = next(e for e in records if bool(tf.reduce_any(e[fields.DIFFICULT])))
    serialized = None
    for s in tf.data.TFRecordDataset(reader.shard_files(data_dir, "train")):
        if reader.parse_example(s)[fields.IMAGE_ID] == example[fields.IMAGE_ID]:
            serialized = s
            break
    for exclude, expected in ((False, example[fields.LABELS]),
                              (True, example[fields.LABELS][~example[fields.DIFFICULT]])):
        cfg = inputs.TrainInputConfig(augment=NO_AUGMENTATION, exclude_difficult=exclude)
        _, _, labels, _ = inputs._augment_example(tf.constant(0, tf.int64), serialized, config, cfg)
        np.testing.assert_array_equal(labels.numpy(), expected.numpy())


def test_eval_sees_every_image_once_with_ground_truth(setup):
    data_dir, config, _ = setup
    ids, n_boxes = [], 0
    for features, labels in inputs.eval_input_fn(data_dir, config, batch_size=16):
        assert features.shape[1:] == (300, 300, 3) and features.dtype == tf.uint8
        ids.extend(labels[fields.IMAGE_ID].numpy().tolist())
        n_boxes += int(tf.reduce_sum(tf.cast(labels[fields.LABELS] > 0, tf.int32)))
    assert len(ids) == 80 and len(set(ids)) == 80  # 80 val images, last batch of 16 kept whole
    assert n_boxes == sum(int(tf.size(e[fields.LABELS])) for e in reader.read_split(data_dir, "val"))


def test_distributed_input_splits_the_global_batch(setup):
    data_dir, config, anchors = setup
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    ds = strategy.distribute_datasets_from_function(
        lambda ctx: inputs.train_input_fn(data_dir, config, anchors, 4, ctx))
    features, _ = next(iter(ds))
    shapes = [t.shape for t in strategy.experimental_local_results(features)]
    assert shapes == [(2, 300, 300, 3), (2, 300, 300, 3)]


def _serialized(boxes, labels, height=60, width=80):
    jpeg = tf.io.encode_jpeg(tf.fill([height, width, 3], tf.constant(128, tf.uint8))).numpy()
    n = len(labels)
    record = tfrecord.ImageRecord(image_id="x", filename="x.jpg", jpeg=jpeg, width=width, height=height,
                                  boxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=tuple(labels),
                                  class_names=("a",) * n, difficult=(False,) * n, truncated=(False,) * n,
                                  poses=("Unspecified",) * n)
    return tf.constant(tfrecord.build_example(record).SerializeToString())


def test_images_without_boxes_or_whose_crop_drops_every_box_train_as_all_background(setup):
    """Full training map + batch encoding, default augmentation, many seeds: no box -> no positive, no NaN."""
    _, config, anchors = setup
    encode = inputs._encode_batch(tf.constant(anchors), config)
    cfg = inputs.TrainInputConfig(seed=5)
    no_boxes = _serialized(np.zeros([0, 4]), [])
    tiny_corner_box = _serialized([[0.0, 0.0, 0.05, 0.05]], [1])  # most crops leave its centre out
    emptied = 0
    for serialized in (no_boxes, tiny_corner_box):
        examples = [inputs._augment_example(tf.constant(i, tf.int64), serialized, config, cfg) for i in range(12)]
        for image, boxes, labels, _ in examples:
            assert image.shape == (300, 300, 3)
            assert boxes.shape[0] == labels.shape[0]
            if labels.shape[0] > 0:
                continue
            emptied += serialized is tiny_corner_box
            features, encoded = encode(image[None], tf.zeros([1, 0, 4]), tf.zeros([1, 0], tf.int32))
            assert features.dtype == tf.uint8
            assert not encoded[fields.CLS_TARGETS].numpy().any()
            assert encoded[fields.NUM_POSITIVES].numpy().tolist() == [0.0]
            np.testing.assert_array_equal(encoded[fields.BOX_TARGETS].numpy(), 0.0)
    assert emptied > 0  # some crop did drop the tiny box, so that case was exercised


def test_augmented_examples_are_the_training_images(setup):
    data_dir, config, anchors = setup
    cfg = inputs.TrainInputConfig(seed=7)
    image, boxes, labels = next(iter(inputs.augmented_examples(data_dir, config, cfg)))
    features, _ = _first_batch(data_dir, config, anchors, 1, seed=7)
    assert image.dtype == tf.uint8 and image.shape == (300, 300, 3)
    # Same path, same seed: the batch holds the example itself (both uint8, rounded in one place).
    np.testing.assert_array_equal(image.numpy(), features[0].numpy())
    assert ((boxes.numpy() >= 0) & (boxes.numpy() <= 1)).all() and boxes.shape[0] == labels.shape[0]


def test_pipelines_share_the_records_without_overlap(setup):
    """Two input pipelines (two workers) read disjoint records: by file with enough shards, by record
    with fewer shards than pipelines."""
    data_dir, _, _ = setup
    files = reader.shard_files(data_dir, "train")
    for shard_files in (files, files[:1]):
        seen = []
        for pipeline in range(2):
            context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline)
            records = inputs._read_shards(shard_files, 8, context)
            seen.append({bytes(r.numpy()) for r in records})
        assert seen[0] and seen[1] and not seen[0] & seen[1]
        everything = {bytes(r.numpy()) for r in tf.data.TFRecordDataset(shard_files)}
        assert seen[0] | seen[1] == everything


def test_to_uint8_rounds_to_nearest_even_within_the_pixel_range():
    values = tf.constant([-0.4, 0.0, 0.5, 1.5, 2.49, 127.5, 254.6, 255.0, 255.4])
    np.testing.assert_array_equal(inputs.to_uint8(values).numpy(), [0, 0, 0, 2, 2, 128, 255, 255, 255])
