"""Seeded weights in torchvision's SSD300-VGG16 key layout, from numpy alone (shared by the parity
generator, tests/reference/torchvision_parity.py, and the test that re-creates them,
tests/test_torchvision_import.py; neither side needs the other's framework).

He-scaled (std sqrt(2 / fan_in), He et al. 2015), so ReLU activations keep their size through the 20
layers instead of vanishing or exploding; conv1_1 is scaled down by INPUT_SCALE as well, because its
input is 0-255 pixels minus the mean (of order 100), not of order 1. Biases are small normals; the
conv4_3 scale (`backbone.scale_weight`, 20 at torchvision's init) is drawn per channel around 20.

The classification head's columns of the ten N/A COCO ids get bias NA_BIAS (-1e4), so their softmax
share is exactly 0 in float32 and the 91-column softmax equals the 81-column one after the gather.
The background column gets BACKGROUND_BIAS, so most anchors score under the 0.01 threshold and the
detections are a few confident boxes rather than 200 near-ties.
"""

import collections

import numpy as np

SEED = 2413
INPUT_SCALE = 1.0 / 64.0
BIAS_STD = 0.05
SCALE_WEIGHT_RANGE = (15.0, 25.0)
NA_BIAS = -1.0e4
BACKGROUND_BIAS = 6.0
FIRST_CONV = "backbone.features.0.weight"
SCALE_WEIGHT = "backbone.scale_weight"
CLASSIFICATION_BIAS = "head.classification_head.module_list.{}.bias"
NUM_COLUMNS = 91
# torchvision.models._meta._COCO_CATEGORIES: the positions of "N/A" among the 91 columns.
NA_COLUMNS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)


def seeded_state_dict(names_and_shapes, seed=SEED):
    """{name: float32 array} for [(name, shape)] in state-dict order, drawn from `seed`."""
    rng = np.random.default_rng(seed)
    state = collections.OrderedDict()
    for name, shape in names_and_shapes:
        shape = tuple(int(s) for s in shape)
        if name == SCALE_WEIGHT:
            value = rng.uniform(*SCALE_WEIGHT_RANGE, size=shape)
        elif name.endswith(".weight"):   # conv [out, in, kh, kw]
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
            if name == FIRST_CONV:
                value *= INPUT_SCALE
        else:
            value = rng.normal(0.0, BIAS_STD, size=shape)
        state[name] = value.astype(np.float32)
    for index in range(6):
        key = CLASSIFICATION_BIAS.format(index)
        if key in state:
            bias = state[key].reshape(-1, NUM_COLUMNS)     # [boxes per location, 91]
            bias[:, 0] = BACKGROUND_BIAS
            bias[:, list(NA_COLUMNS)] = NA_BIAS
    return state
