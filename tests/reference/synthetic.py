"""The network outputs of the reference fixtures, regenerated from a formula instead of stored.

Pure numpy (no torch, no project import), shared by the generator (tests/reference/reference_equivalence.py)
and the test that reads its fixture (tests/test_reference_equivalence.py), so both sides compute the very
same box codes and logits; the fixture stores only their checksum.
"""

import numpy as np

NUM_CLASSES = 20                    # VOC: logits have 21 columns


def pseudo_uniform(shape, salt):
    """Deterministic values in [0, 1): frac(sin(12.9898 i + 78.233 salt) * 43758.5453), float64."""
    i = np.arange(int(np.prod(shape)), dtype=np.float64)
    value = np.sin(i * 12.9898 + salt * 78.233) * 43758.5453
    return (value - np.floor(value)).reshape(shape)


def predictions(num_images, num_anchors, salt, kind):
    """Box codes [B, A, 4] ([ty, tx, th, tw]) and logits [B, A, C+1], float32, from pseudo_uniform.

    kind "loss": logits uniform in [-3, 3); "sparse" / "dense": background dominates (logit 4) and a
    tail of anchors per class scores above 0.01, at most logit 3 / 7, so no score rounds to 1.
    """
    codes = ((pseudo_uniform((num_images, num_anchors, 4), salt) - 0.5) * 2.0).astype(np.float32)
    u = pseudo_uniform((num_images, num_anchors, NUM_CLASSES + 1), salt + 1)
    if kind == "loss":
        logits = (u - 0.5) * 6.0
    else:
        cut, scale = {"sparse": (0.985, 400.0), "dense": (0.9, 100.0)}[kind]
        logits = -3.0 + scale * np.maximum(u - cut, 0.0)
        logits[..., 0] = 4.0
        codes *= 0.25
    return codes, logits.astype(np.float32)


def checksum(codes, logits):
    """[sum of codes, sum of logits] in float64: the fixture stores it, the test compares it."""
    return np.asarray([codes.sum(dtype=np.float64), logits.sum(dtype=np.float64)])
