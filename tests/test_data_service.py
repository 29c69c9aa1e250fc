"""Training input through a tf.data service (engine/data_service.py + inputs.from_data_service):
a dispatcher and a worker in this process on localhost, the same batches and the same training steps as
the local pipeline with the same seed, and train_ssd.py --data_service end to end."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dataset import fields, reader
from engine import data_service, training
from model import anchors as anchors_lib
from model import presets
from nets import ssd
from preprocessing import inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 2
STEPS = 3


@pytest.fixture(scope="module")
def cluster():
    dispatcher = data_service.start_dispatcher(port=0)
    worker = data_service.start_worker(data_service.address_of(dispatcher), port=0)
    yield data_service.address_of(dispatcher)
    worker.stop()
    dispatcher.stop()


def _config(data_dir):
    return presets.get("ssd300_vgg16", reader.num_classes(f"{data_dir}/label_map.pbtxt"), width_multiplier=0.125)


def _losses(data_dir, config, anchors, input_config, initial_weights):
    """Per step losses of STEPS training steps from `initial_weights`, and the batches they used."""
    model = ssd.build(config)
    model.set_weights(initial_weights)
    optimizer = training.make_optimizer(1e-3, 0.9, "none", name="adam")
    optimizer.build(model.trainable_variables)
    strategy = tf.distribute.get_strategy()
    step = training.make_train_step(model, optimizer, config, strategy, weight_decay=5e-4)
    batches = list(inputs.train_input_fn(data_dir, config, anchors, BATCH, input_config=input_config).take(STEPS))
    iterator = iter(batches)
    return [float(step(iterator)["total_loss"]) for _ in range(STEPS)], batches


@pytest.mark.slow
def test_service_batches_and_training_steps_equal_the_local_pipeline(sample_records, cluster):
    config = _config(sample_records)
    anchors = anchors_lib.generate(config)
    weights = ssd.build(config).get_weights()
    local_config = inputs.TrainInputConfig(seed=3)
    remote_config = inputs.TrainInputConfig(seed=3, data_service=cluster)
    local_losses, local_batches = _losses(sample_records, config, anchors, local_config, weights)
    remote_losses, remote_batches = _losses(sample_records, config, anchors, remote_config, weights)
    for (local_images, local_labels), (remote_images, remote_labels) in zip(local_batches, remote_batches):
        assert remote_images.dtype == tf.uint8 and remote_images.shape == (BATCH, 300, 300, 3)
        np.testing.assert_array_equal(local_images.numpy(), remote_images.numpy())
        for key in (fields.CLS_TARGETS, fields.BOX_TARGETS, fields.NUM_POSITIVES):
            np.testing.assert_array_equal(local_labels[key].numpy(), remote_labels[key].numpy())
    assert all(np.isfinite(local_losses))
    np.testing.assert_allclose(remote_losses, local_losses, rtol=1e-6)
    # Another seed gives other batches: the equality above is not the service ignoring the seed.
    other = next(iter(inputs.train_input_fn(sample_records, config, anchors, BATCH,
                                            input_config=inputs.TrainInputConfig(seed=4, data_service=cluster))))
    assert not np.array_equal(other[0].numpy(), local_batches[0][0].numpy())


@pytest.mark.slow
def test_train_ssd_trains_from_the_data_service(sample_records, cluster, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    cmd = [sys.executable, os.path.join(REPO, "train_ssd.py"), "--data_dir", sample_records,
           "--model_dir", str(tmp_path / "run"), "--data_service", cluster, "--width_multiplier", "0.125",
           "--batch_size", "2", "--max_steps", "3", "--warmup_steps", "0", "--optimizer", "adam",
           "--image_summary_steps", "0", "--log_every_n_steps", "1", "--save_checkpoints_steps", "3"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [int(s) for s in re.findall(r"step (\d+)/3 cls_loss", result.stderr)]
    assert steps == [1, 2, 3]
    assert os.path.exists(tmp_path / "run" / "ckpt-3.index")


@pytest.mark.slow
def test_sharding_off_resumes_at_the_uninterrupted_runs_batches(sample_records, cluster):
    """A run restarted at step 2 through the service with sharding off gets the batches an uninterrupted
    run trains steps 3 and 4 on (the local pipeline's; test_reliability_training proves its resume exact)."""
    config = _config(sample_records)
    anchors = anchors_lib.generate(config)
    local = inputs.train_input_fn(sample_records, config, anchors, BATCH,
                                  input_config=inputs.TrainInputConfig(seed=5))
    uninterrupted = [images.numpy() for images, _ in local.take(4)]
    remote_config = inputs.TrainInputConfig(seed=5, data_service=cluster, data_service_sharding="off")
    resumed = [images.numpy() for images, _ in inputs.train_input_fn(
        sample_records, config, anchors, BATCH, input_config=remote_config, start_step=2).take(2)]
    np.testing.assert_array_equal(resumed[0], uninterrupted[2])
    np.testing.assert_array_equal(resumed[1], uninterrupted[3])
    # A fresh job per start position: the dispatcher never hands the restart the old job's position.
    assert (inputs.data_service_job_name(BATCH, "train", "off", 4) !=
            inputs.data_service_job_name(BATCH, "train", "off", 0))
    assert inputs.data_service_job_name(BATCH) == "ssd_train_batch2"
