"""engine/divergence.py: the loss band, and the checkpoint a non-finite loss names (issue 27, item 3).

Losses are hand-made sequences, so every median and step below can be checked by hand. The end-to-end
cases (train_ssd.py diverging, then resumed) are in test_reliability_training.py and test_train_ssd.py.
"""

import math

import pytest
import tensorflow as tf

from engine import checkpoints, divergence

NAN = float("nan")


def test_band_marks_where_the_loss_left_it_and_a_recovering_spike_clears_it():
    band = divergence.LossBand(factor=5.0, window=20)
    assert band.limit is None
    for step, loss in enumerate([10.0, 8.0, 9.0], start=1):
        assert not band.observe(step, loss)
    assert band.limit == 45.0                     # 5 x median(10, 8, 9)
    assert band.observe(4, 46.0)                  # above 45: an excursion begins at step 4
    assert not band.observe(5, 1e6) and band.diverging_since == 4
    assert band.limit == 45.0                     # out-of-band losses stay out of the median
    assert not band.observe(6, 7.0)               # back inside: the spike recovered by itself
    assert band.diverging_since is None and band.limit == 5 * 8.5


def test_band_takes_a_loss_that_stays_up_for_a_window_as_the_new_level():
    band = divergence.LossBand(factor=5.0, window=3)
    for step, loss in enumerate([1.0, 1.0, 1.0], start=1):
        band.observe(step, loss)
    assert band.observe(4, 10.0) and band.diverging_since == 4
    band.observe(5, 10.0)
    band.observe(6, 10.0)                         # the third step above it: a new level
    assert band.diverging_since is None and band.limit == 50.0


def _run(tmp_path, losses, keep):
    """Saves ckpt-N after each finite loss of step N (as train_ssd.py does); returns the error."""
    model_dir = str(tmp_path)
    value = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=value), model_dir, max_to_keep=keep)
    watch = divergence.Watch(model_dir, learning_rate=1e-3)
    for step, loss in enumerate(losses, start=1):
        if math.isnan(loss):
            with pytest.raises(FloatingPointError) as info:
                watch.check(step, {"total_loss": tf.constant(loss), "box_loss": 2.0})
            return model_dir, str(info.value)
        watch.check(step, {"total_loss": loss})
        value.assign(float(step))
        manager.save(checkpoint_number=step)
    raise AssertionError("no non-finite loss")


def _numbers(tmp_path):
    return sorted(int(p.name[5:-6]) for p in tmp_path.glob("ckpt-*.index"))


def test_names_the_last_checkpoint_before_the_divergence_even_after_rotation_deleted_it(tmp_path):
    # Steps 1-4 in the band; step 5's loss (from ckpt-4's weights) leaves it, so ckpt-3 is the last
    # good one. keep=2 rotates it away at the save of step 5; the NaN at step 8 puts it back.
    model_dir, message = _run(tmp_path, [10.0, 9.0, 8.0, 8.0, 100.0, 1e4, 1e9, NAN], keep=2)
    assert "non-finite loss at step 8" in message and "'total_loss': nan" in message
    assert "the divergence began at step 5, 3 steps earlier" in message
    assert "removed ckpt-6, ckpt-7" in message    # ckpt-4 and ckpt-5 were rotated away already
    assert f"{model_dir}/ckpt-3 (step 3, 5 steps back), is now the latest" in message
    assert "--learning_rate 0.0001 (a tenth of 0.001)" in message
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-3")
    assert _numbers(tmp_path) == [3]
    assert not (tmp_path / checkpoints.PROTECTED_DIRNAME).exists()
    restored = tf.Variable(-1.0)
    tf.train.Checkpoint(v=restored).restore(tf.train.latest_checkpoint(model_dir)).assert_consumed()
    assert float(restored.numpy()) == 3.0         # its own weights, not another checkpoint's


def test_a_nan_without_warning_removes_only_the_checkpoint_that_produced_it(tmp_path):
    model_dir, message = _run(tmp_path, [10.0, 9.0, 8.0, 8.0, 8.0, 8.0, NAN], keep=5)
    # The loss of step 7 came from ckpt-6's weights: ckpt-6 goes, ckpt-5 is the last good one.
    assert "within its band up to the step before; removed ckpt-6" in message
    assert f"{model_dir}/ckpt-5 (step 5, 2 steps back)" in message
    assert _numbers(tmp_path) == [2, 3, 4, 5]


def test_without_a_checkpoint_before_the_divergence_the_run_restarts_from_initialization(tmp_path):
    # The shape: step 1's update ruins the weights, step 2's loss is finite but huge, then NaN.
    model_dir, message = _run(tmp_path, [39.3, 1.7e32, 3.3e32, NAN], keep=5)
    assert "the divergence began at step 2, 2 steps earlier" in message
    assert "removed ckpt-1, ckpt-2, ckpt-3" in message
    assert "no checkpoint predates it, so a restart begins from the initialization" in message
    assert tf.train.latest_checkpoint(model_dir) is None and _numbers(tmp_path) == []


def test_a_recovered_spike_releases_the_protected_checkpoint(tmp_path):
    model_dir = str(tmp_path)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(0.0)), model_dir, max_to_keep=5)
    watch = divergence.Watch(model_dir)
    protected = tmp_path / checkpoints.PROTECTED_DIRNAME
    for step, loss in enumerate([10.0, 9.0, 8.0, 200.0], start=1):
        assert watch.check(step, {"total_loss": loss}) == {"total_loss": loss}
        manager.save(checkpoint_number=step)
    assert sorted(p.name for p in protected.iterdir()) == ["ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    watch.check(5, {"total_loss": 9.0})
    assert not protected.exists() and watch.protected is None
