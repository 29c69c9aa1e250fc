"""Names the training flags choose from, importable without TensorFlow (so `--help` stays fast)."""

# engine.training.make_optimizer builds each: SGD is the paper's; Adam trains from scratch.
OPTIMIZERS = ("sgd", "adam")
# Keras dtype policies: "none" is float32; float16 adds dynamic loss scaling.
MIXED_PRECISION = ("none", "bfloat16", "float16")


def every(period, step, max_steps=None):
    """True when a cadence of `period` steps (0: never) falls on `step`, or on the last step `max_steps`
    when one is given (so the run ends with that action done)."""
    return period > 0 and (step % period == 0 or step == max_steps)


# README's sample recipe: what trains from scratch (no pretrained backbone) on the embedded sample.
FROM_SCRATCH_COMMAND = ("python3 train_ssd.py --batch_size 16 --model_dir logs/sample --width_multiplier 0.25 "
                        "--optimizer adam --learning_rate 1e-3 --warmup_steps 100 --max_steps 2000 "
                        "--decay_boundaries 1500,1800 --save_checkpoints_steps 500 --eval_every_steps 1000")


def backbone_present(path):
    """True when `path` holds a backbone file: a file, a checkpoint prefix, or a non-empty folder."""
    import os
    return bool(path) and (os.path.isfile(path) or os.path.isfile(path + ".index") or
                           (os.path.isdir(path) and any(not n.startswith(".") for n in os.listdir(path))))


def seed_everything(seed, deterministic=False):
    """Seeds Python, NumPy and TensorFlow (keras.utils.set_random_seed); with `deterministic`, also
    makes TensorFlow's ops deterministic (tf.config.experimental.enable_op_determinism), so two runs of
    the same seed on the same machine give bit-identical weights.

    Call it before importing nets/: a Keras initializer created without a seed draws its seed from
    Python's `random` when it is created, and nets/vgg16.py creates one at import.
    """
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
