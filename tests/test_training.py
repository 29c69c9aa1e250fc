"""The training machinery: schedule, weight decay, the distributed step, the non-finite stop."""

import numpy as np
import pytest
import tensorflow as tf

from model import anchors as anchors_lib
from engine import training
from model import presets, targets
from nets import ssd

TINY = dict(width_multiplier=1 / 16)


def test_schedule_warmup_and_decay_hand_computed():
    s = training.WarmupPiecewiseSchedule(1e-3, [100, 200], [1.0, 0.1, 0.01], warmup_steps=10,
                                         warmup_start=0.1)
    # warm-up: 0.1 + 0.9 * step / 10 of the base rate.
    np.testing.assert_allclose(float(s(0)), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(float(s(5)), 1e-3 * 0.55, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(s(99)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(s(100)), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(float(s(250)), 1e-5, rtol=1e-6)


def test_schedule_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="len\\(factors\\)"):
        training.WarmupPiecewiseSchedule(1e-3, [100, 200], [1.0, 0.1])


def test_weight_decay_covers_kernels_only():
    model = ssd.build(presets.get("ssd300_vgg16", 2, **TINY))
    decayed = training.decayed_variables(model)
    assert decayed and all(v.path.endswith("kernel") for v in decayed)
    assert not any(v.path.startswith("conv4_3_norm/") for v in decayed)
    # 15 VGG convs (13 + fc6 + fc7) + 8 extra convs + 6 x 2 heads.
    assert len(decayed) == 15 + 8 + 12
    w = [tf.Variable([[1.0, 2.0]]), tf.Variable([3.0])]
    np.testing.assert_allclose(float(training.weight_decay_loss(w, 0.1)), 0.5 * 0.1 * (1 + 4 + 9))


def _batch(config, anchors, batch_size, seed):
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 50, (batch_size, config.image_size, config.image_size, 3)).astype(np.float32)
    centers = rng.uniform(0.2, 0.8, (batch_size, 3, 2))
    sizes = rng.uniform(0.1, 0.4, (batch_size, 3, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=-1).astype(np.float32)
    labels = rng.integers(1, config.num_classes + 1, (batch_size, 3)).astype(np.int32)
    valid = np.ones((batch_size, 3), bool)
    valid[0, 1:] = False  # images with different numbers of boxes: positives differ per replica
    encoded = targets.encode_targets(boxes, labels, valid, anchors, config)
    return images, encoded


def _one_step(strategy, config, anchors, initial_weights, batch):
    with strategy.scope():
        model = ssd.build(config)
        model.set_weights(initial_weights)
        optimizer = training.make_optimizer(0.01, 0.9, "none")
        optimizer.build(model.trainable_variables)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch).unbatch().batch(len(batch[0])))
    step = training.make_train_step(model, optimizer, config, strategy, weight_decay=5e-4)
    losses = step(iter(dataset))
    return model.get_weights(), {k: float(v) for k, v in losses.items()}


@pytest.mark.slow
def test_two_replicas_take_the_same_step_as_one():
    config = presets.get("ssd300_vgg16", 3, **TINY)
    anchors = anchors_lib.generate(config)
    initial = ssd.build(config).get_weights()
    batch = _batch(config, anchors, 4, seed=0)
    one_w, one_losses = _one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), config, anchors, initial,
                                  batch)
    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert two.num_replicas_in_sync == 2
    two_w, two_losses = _one_step(two, config, anchors, initial, batch)
    for key in ("cls_loss", "box_loss", "total_loss", "num_positives"):
        np.testing.assert_allclose(two_losses[key], one_losses[key], rtol=1e-4, err_msg=key)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(one_w, initial))
    assert moved > 1e-6  # the step did something
    for a, b in zip(two_w, one_w):
        # float32 sums in another order: ~1e-6 apart, far below the ~1e-2 the step moved them.
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_steps_train_and_float16_skips_overflows(policy):
    import keras
    config = presets.get("ssd300_vgg16", 3, **TINY)
    anchors = anchors_lib.generate(config)
    batch = _batch(config, anchors, 2, seed=1)
    strategy = tf.distribute.get_strategy()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = ssd.build(config)
        optimizer = training.make_optimizer(1e-3, 0.9, policy.split("_")[1], name="adam")
        optimizer.build(model.trainable_variables)
        step = training.make_train_step(model, optimizer, config, strategy, weight_decay=5e-4)
        dataset = iter(tf.data.Dataset.from_tensors(batch).repeat())
        calls = 0
        while int(optimizer.iterations.numpy()) < 3 and calls < 40:
            losses = step(dataset)
            calls += 1
            assert np.isfinite(float(losses["total_loss"]))  # computed in float32 either way
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("conv1_1").compute_dtype == policy.split("_")[1]
    assert int(optimizer.iterations.numpy()) == 3
    if policy == "mixed_float16":
        # Dynamic loss scaling starts at 2^15, overflows float16 gradients and halves until it fits:
        # those steps are skipped, so more calls than updates.
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and calls > 3
    else:
        assert calls == 3  # bfloat16 has float32's range: no loss scaling, no skipped step


def test_weight_decay_scopes_by_hand():
    """kernels: conv kernels only; all: every trainable variable (biases, batch norm) -- counted on a
    two-layer model whose variables are known by name."""
    import keras
    model = keras.Sequential([keras.Input([4, 4, 1]), keras.layers.Conv2D(2, 3, name="conv"),
                              keras.layers.BatchNormalization(name="bn")])
    kernels = [v.path.split("/", 1)[1] for v in training.decayed_variables(model)]
    every_one = [v.path.split("/", 1)[1] for v in training.decayed_variables(model, "all")]
    assert kernels == ["conv/kernel"]
    assert every_one == ["conv/kernel", "conv/bias", "bn/gamma", "bn/beta"]
    # 0.5 * wd * sum w^2 over the chosen variables.
    for v in model.trainable_variables:
        v.assign(tf.ones_like(v))
    assert float(training.weight_decay_loss(training.decayed_variables(model, "all"), 0.1)) == \
        pytest.approx(0.5 * 0.1 * (18 + 2 + 2 + 2))
    with pytest.raises(ValueError, match="unknown weight decay scope 'biases'"):
        training.decayed_variables(model, "biases")
