"""Seeded weights for a PyTorch state dict, made from its names and shapes alone (numpy only).

The forward-parity fixtures store no weights: the offline generator fills the reference model's state
dict with `seeded_state(names, shapes, seed)`, and the test rebuilds the same arrays from the names and
shapes the fixture keeps. Values are drawn so that activations stay of order 1 through a deep net:
conv / linear weights N(0, 1 / fan_in); batch-norm weights and running variances U(0.5, 1.5); biases
and running means N(0, 0.1); `num_batches_tracked` 0. Tensor k uses numpy's PCG64 seeded with
(seed, k), the same stream on every machine.
"""

import numpy as np

BATCH_NORM_STATS = ("running_mean", "running_var")


def _is_batch_norm(name, names):
    return name.rsplit(".", 1)[0] + ".running_var" in names


def seeded_tensor(name, shape, index, seed, names):
    """The value of state-dict entry `name` (position `index`) as float32 (int64 for counters)."""
    rng = np.random.default_rng([seed, index])
    shape = tuple(int(s) for s in shape)
    if name.endswith("num_batches_tracked"):
        return np.zeros(shape, np.int64)
    if name.endswith(".running_var") or (name.endswith(".weight") and _is_batch_norm(name, names)):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if len(shape) >= 2:      # conv [out, in / groups, kh, kw] or linear [out, in]
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def seeded_state(names, shapes, seed):
    """{name: np.ndarray} for every (name, shape), in state-dict order."""
    names = list(names)
    known = set(names)
    return {name: seeded_tensor(name, shape, index, seed, known)
            for index, (name, shape) in enumerate(zip(names, shapes))}


def seeded_images(count, size, seed):
    """uint8 RGB images [count, size, size, 3], uniform 0-255 (the fixtures' inputs, not stored)."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
