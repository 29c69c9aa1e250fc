"""engine/evaluation.py and engine/checkpoints.py pieces: batch -> evaluator, flattened summaries, checkpoint steps, checkpoint watching."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from engine import checkpoints, evaluation, summaries
from dataset import fields
from metrics.evaluator import DetectionEvaluator


def _batch():
    """Two images: the first with 2 gts (+1 padding row) and 1 of 3 detections valid, the second with
    1 gt (+2 padding rows) and 2 valid detections."""
    labels = {
        fields.IMAGE_ID: np.array([b"000001", b"000002"]),
        fields.HEIGHT: np.array([100, 200]), fields.WIDTH: np.array([50, 400]),
        fields.BOXES: np.array([[[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.9, 0.9], [0, 0, 0, 0]],
                                [[0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32),
        fields.LABELS: np.array([[1, 2, 0], [2, 0, 0]]),
        fields.DIFFICULT: np.array([[False, True, False], [False, False, False]]),
    }
    detections = {
        fields.DETECTION_BOXES: np.array([[[0.1, 0.1, 0.5, 0.5], [0, 0, 0, 0], [0, 0, 0, 0]],
                                          [[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.6, 0.6], [0, 0, 0, 0]]],
                                         np.float32),
        fields.DETECTION_SCORES: np.array([[0.9, 0, 0], [0.8, 0.1, 0]], np.float32),
        fields.DETECTION_CLASSES: np.array([[1, 0, 0], [2, 1, 0]]),
        fields.NUM_DETECTIONS: np.array([1, 2]),
    }
    return labels, detections


def test_add_batch_drops_padding_rows_and_invalid_detections():
    evaluator = DetectionEvaluator(["cat", "dog"])
    evaluation.add_batch(evaluator, *_batch())
    data = evaluator.evaluation_set()
    assert data.image_ids == ("000001", "000002")
    assert data.heights.tolist() == [100, 200] and data.widths.tolist() == [50, 400]
    assert data.gt_image_index.tolist() == [0, 0, 1]
    assert data.gt_labels.tolist() == [1, 2, 2]
    assert data.gt_difficult.tolist() == [False, True, False]
    assert data.det_image_index.tolist() == [0, 1, 1]
    assert data.det_classes.tolist() == [1, 2, 1]
    # Every non-difficult gt is found exactly by its top detection: AP 1 for both classes.
    results = evaluator.evaluate(("voc12",))
    assert results["voc12"]["AP"] == {"cat": 1.0, "dog": 1.0}


def test_flatten_numbers_joins_keys_and_skips_undefined():
    results = {"num_images": 3, "voc07": {"mAP": 0.5, "AP": {"cat": 1.0, "dog": None}},
               "coco": {"AP": None, "AP50": 0.25}}
    assert evaluation.flatten_numbers(results) == {
        "num_images": 3.0, "voc07/mAP": 0.5, "voc07/AP/cat": 1.0, "coco/AP50": 0.25}


def test_write_summaries_reads_back(tmp_path):
    results = {"num_images": 2, "voc07": {"mAP": 0.5, "AP": {"cat": 1.0, "dog": None}}}
    writer = summaries.Writer(str(tmp_path))
    evaluation.write_summaries(writer, 7, results, kept=[], config=None, class_names=["cat", "dog"])
    writer.close()
    values = {}
    for path in tf.io.gfile.glob(str(tmp_path / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values[(event.step, value.tag)] = float(tf.make_ndarray(value.tensor))
    assert values == {(7, "num_images"): 2.0, (7, "voc07/mAP"): 0.5, (7, "voc07/AP/cat"): 1.0}


def test_checkpoint_step_prefers_optimizer_iterations(tmp_path):
    optimizer = keras.optimizers.SGD()
    optimizer.build([tf.Variable(1.0)])
    optimizer.iterations.assign(7)
    path = tf.train.Checkpoint(optimizer=optimizer).write(str(tmp_path / "ckpt-3"))
    assert checkpoints.checkpoint_step(path) == 7


def test_checkpoint_step_from_name_or_error(tmp_path):
    path = tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(tmp_path / "ckpt-12"))
    assert checkpoints.checkpoint_step(path) == 12
    path = tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(tmp_path / "weights"))
    with pytest.raises(ValueError, match="cannot tell the step"):
        checkpoints.checkpoint_step(path)


class _FakeTime:
    """A clock that advances only when slept on, running `on_sleep` hooks (new checkpoints) first."""

    def __init__(self):
        self.now = 0.0
        self.on_sleep = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        if self.on_sleep:
            self.on_sleep.pop(0)()
        self.now += seconds


def _save_fake_checkpoint(model_dir, number, all_numbers):
    prefix = os.path.join(model_dir, f"ckpt-{number}")
    open(prefix + ".index", "w").close()
    tf.compat.v1.train.update_checkpoint_state(model_dir, prefix,
                                               [os.path.join(model_dir, f"ckpt-{n}") for n in all_numbers])
    return prefix


def test_watch_checkpoints_yields_existing_then_new_then_times_out(tmp_path):
    model_dir = str(tmp_path)
    _save_fake_checkpoint(model_dir, 2, [2])
    _save_fake_checkpoint(model_dir, 4, [2, 4])
    fake = _FakeTime()
    # While waiting: ckpt-6 appears and ckpt-2 is deleted by the manager (keep 2).
    fake.on_sleep.append(lambda: _save_fake_checkpoint(model_dir, 6, [4, 6]))
    seen = [(os.path.basename(p), fake.now)
            for p in checkpoints.watch_checkpoints(model_dir, timeout_s=10, poll_s=1,
                                                  clock=fake.clock, sleep=fake.sleep)]
    assert seen == [("ckpt-2", 0.0), ("ckpt-4", 0.0), ("ckpt-6", 1.0)]
    assert fake.now == 11.0  # 10 s after ckpt-6 appeared, polling every second


def test_watch_checkpoints_empty_dir_times_out(tmp_path):
    fake = _FakeTime()
    assert list(checkpoints.watch_checkpoints(str(tmp_path), timeout_s=3, poll_s=1, clock=fake.clock,
                                             sleep=fake.sleep)) == []
    assert fake.now == 3.0


def test_watch_checkpoints_skips_a_listed_checkpoint_whose_files_are_gone(tmp_path):
    model_dir = str(tmp_path)
    _save_fake_checkpoint(model_dir, 2, [2])
    _save_fake_checkpoint(model_dir, 4, [2, 4])
    os.remove(os.path.join(model_dir, "ckpt-2.index"))
    fake = _FakeTime()
    paths = checkpoints.watch_checkpoints(model_dir, timeout_s=1, clock=fake.clock, sleep=fake.sleep)
    assert [os.path.basename(p) for p in paths] == ["ckpt-4"]


def _step_from_name(path):
    return int(path.rsplit("-", 1)[1])  # fake checkpoints hold no variables to read a step from


def test_watch_checkpoints_stops_after_the_checkpoint_at_max_steps(tmp_path):
    model_dir = str(tmp_path)
    for n, listed in ((2, [2]), (4, [2, 4]), (6, [2, 4, 6])):
        _save_fake_checkpoint(model_dir, n, listed)
    fake = _FakeTime()
    paths = checkpoints.watch_checkpoints(model_dir, timeout_s=100, max_steps=3,
                                         step_fn=_step_from_name,
                                         clock=fake.clock, sleep=fake.sleep)
    assert [os.path.basename(p) for p in paths] == ["ckpt-2", "ckpt-4"]
    assert fake.now == 0.0  # stopped by the step, without waiting


def test_check_label_maps_names_every_difference():
    checkpoints.check_label_maps(("cat", "dog"), ("cat", "dog"), "m", "d/label_map.pbtxt")
    with pytest.raises(ValueError, match=r"mismatch: the model in m was trained with 2 classes, "
                                         r"d/label_map.pbtxt has 2; id 1: model 'cat' vs data 'dog', "
                                         r"id 2: model 'dog' vs data 'cat'"):
        checkpoints.check_label_maps(("cat", "dog"), ("dog", "cat"), "m", "d/label_map.pbtxt")
    with pytest.raises(ValueError, match=r"2 classes, d/label_map.pbtxt has 3\. Evaluate"):
        checkpoints.check_label_maps(("cat", "dog"), ("cat", "dog", "cow"), "m", "d/label_map.pbtxt")
