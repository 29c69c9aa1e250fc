"""Names the training flags choose from and the run's plan, importable without TensorFlow (so `--help`
stays fast)."""

import dataclasses

from model import presets

# engine.training.make_optimizer builds each: SGD is the paper's; Adam trains from scratch.
OPTIMIZERS = ("sgd", "adam")
# Keras dtype policies: "none" is float32; float16 adds dynamic loss scaling.
MIXED_PRECISION = ("none", "bfloat16", "float16")
# engine.training.decayed_variables: conv kernels (Caffe), or every trainable variable (PyTorch recipes).
WEIGHT_DECAY_SCOPES = ("kernels", "all")
# Training augmentation recipes, the default first: the names of preprocessing.augment.policy_names()
# (tested equal), here so that --help needs no TensorFlow.
AUGMENTATIONS = ("caffe", "mlperf", "ssdlite")
# Learning-rate schedules (engine.training.make_schedule): warm-up then piecewise-constant factors
# (Caffe, MLPerf), or warm-up then a cosine stepped once per epoch (torchvision's detection recipes,
# --lr-scheduler cosineannealinglr).
PIECEWISE, COSINE_PER_EPOCH = "piecewise", "cosine_per_epoch"
SCHEDULES = (PIECEWISE, COSINE_PER_EPOCH)


def every(period, step, max_steps=None):
    """True when a cadence of `period` steps (0: never) falls on `step`, or on the last step `max_steps`
    when one is given (so the run ends with that action done)."""
    return period > 0 and (step % period == 0 or step == max_steps)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long a run trains, its learning-rate schedule and its evaluation cadence: read from the flags
    (train_ssd.py) or decided by MLPerf mode (engine/mlperf.make_plan), and passed to the loop explicitly;
    nothing writes them back into the flags."""

    max_steps: int
    learning_rate: float             # the base rate the factors multiply
    decay_boundaries: tuple          # steps where the rate factor changes, increasing
    decay_factors: tuple             # one more than decay_boundaries
    warmup_steps: int                # 0: no warm-up
    warmup_start: float = 0.1        # the warm-up's first rate, as a fraction of learning_rate
    eval_every_steps: int = 0        # in-process evaluation cadence; 0: never
    schedule: str = PIECEWISE        # SCHEDULES; COSINE_PER_EPOCH ignores the boundaries and factors
    steps_per_epoch: int = 0         # COSINE_PER_EPOCH's epoch length in steps (> 0 there)


# README's sample recipe: what trains from scratch (no pretrained backbone) on the embedded sample.
FROM_SCRATCH_COMMAND = ("python3 train_ssd.py --batch_size 16 --model_dir logs/sample --width_multiplier 0.25 "
                        "--optimizer adam --learning_rate 1e-3 --warmup_steps 100 --max_steps 2000 "
                        "--decay_boundaries 1500,1800 --save_checkpoints_steps 500 --eval_every_steps 1000")


def backbone_present(path):
    """True when `path` holds a backbone file: a file, a checkpoint prefix, or a non-empty folder; or is
    `keras:imagenet` (Keras downloads its MobileNetV3Large, nets/keras_mobilenet_v3.py)."""
    import os
    if path == presets.KERAS_IMAGENET:
        return True
    return bool(path) and (os.path.isfile(path) or os.path.isfile(path + ".index") or
                           (os.path.isdir(path) and any(not n.startswith(".") for n in os.listdir(path))))
