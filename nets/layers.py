"""Keras layers the SSD graph needs that Keras does not ship.

`L2Normalization` is Caffe SSD's `Normalize` layer on conv4_3 (ParseNet, Liu et al. 2015; SSD paper
§3.1 "conv4_3 has a different feature scale compared to the other layers, we use the L2 normalization
technique ... scale the feature norm at each location to 20 and learn the scale").
"""

import keras
from keras import ops

# ssd_pascal.py: Normalize layer `scale_filler { type: "constant" value: 20 }`.
CONV4_3_NORM_INITIAL_SCALE = 20.0
# Guards the division at locations where every channel is 0 (all-ReLU-dead pixels).
_NORM_EPSILON = 1e-10


class L2Normalization(keras.layers.Layer):
    """x / ||x||_2 over the channel axis, times a learnable per-channel scale `gamma`.

    Input and output: [B, H, W, channels]. Weight `gamma`: [channels], initialised to `initial_scale`
    (Caffe `across_spatial: false`, `channel_shared: false`).

    The norm is computed in float32 even under a mixed float16 policy: a sum of 512 squared ReLU
    activations of a few hundred overflows float16's 65504.
    """

    def __init__(self, initial_scale=CONV4_3_NORM_INITIAL_SCALE, **kwargs):
        super().__init__(**kwargs)
        self.initial_scale = float(initial_scale)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.initial_scale),
            trainable=True,
        )

    def call(self, inputs):
        features = ops.cast(inputs, "float32")
        squared_norm = ops.sum(ops.square(features), axis=-1, keepdims=True)     # [B, H, W, 1]
        unit = features * ops.rsqrt(ops.maximum(squared_norm, _NORM_EPSILON))     # [B, H, W, channels]
        return ops.cast(unit * ops.cast(self.gamma, "float32"), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["initial_scale"] = self.initial_scale
        return config
