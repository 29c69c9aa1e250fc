"""One worker of the two-process MultiWorkerMirroredStrategy test (tests/test_train_ssd.py).

    python3 -m tests.scripts.mwms_worker DATA_DIR OUT.npz   (from the repository root; TF_CONFIG set by the test)

Trains a tiny SSD a few steps through the real distributed input function and training step, then
saves its weights so the test can check that both workers end with the same ones.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dataset import reader  # noqa: E402
from engine import training
from model import anchors as anchors_lib, presets  # noqa: E402
from nets import ssd  # noqa: E402
from preprocessing import inputs  # noqa: E402

STEPS = 3


def main(data_dir, out_path):
    strategy = training.make_strategy()
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    keras.utils.set_random_seed(0)  # the same initial weights on both workers
    config = presets.get("ssd300_vgg16", reader.num_classes(os.path.join(data_dir, "label_map.pbtxt")),
                         width_multiplier=1 / 16)
    anchors = anchors_lib.generate(config)
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: inputs.train_input_fn(data_dir, config, anchors, 4, ctx))
    with strategy.scope():
        model = ssd.build(config)
        optimizer = training.make_optimizer(1e-3, 0.9, "none")
        optimizer.build(model.trainable_variables)
    step = training.make_train_step(model, optimizer, config, strategy, weight_decay=5e-4)
    iterator = iter(dataset)
    for _ in range(STEPS):
        losses = step(iterator)
    np.savez(out_path, *model.get_weights(), steps=int(optimizer.iterations.numpy()),
             total_loss=float(losses["total_loss"]), chief=training.is_chief(strategy))


if __name__ == "__main__":
    main(*sys.argv[1:])
