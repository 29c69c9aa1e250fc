"""Names the training flags choose from, importable without TensorFlow (so `--help` stays fast)."""

# engine.training.make_optimizer builds each: SGD is the paper's; Adam trains from scratch.
OPTIMIZERS = ("sgd", "adam")
# Keras dtype policies: "none" is float32; float16 adds dynamic loss scaling.
MIXED_PRECISION = ("none", "bfloat16", "float16")


def every(period, step, max_steps=None):
    """True when a cadence of `period` steps (0: never) falls on `step`, or on the last step `max_steps`
    when one is given (so the run ends with that action done)."""
    return period > 0 and (step % period == 0 or step == max_steps)
