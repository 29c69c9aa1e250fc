"""nets/weight_table.py: the layout converters on hand-checkable arrays, and `assign`, all or nothing."""

import keras
import numpy as np
import pytest

from nets import weight_table
from nets.weight_table import BIAS, KERNEL, Entry


def test_oihw_to_hwio_moves_each_element_where_keras_reads_it():
    torch_kernel = np.arange(2 * 3 * 1 * 2).reshape(2, 3, 1, 2)     # [out 2, in 3, kh 1, kw 2]
    keras_kernel = weight_table.oihw_to_hwio(torch_kernel)
    assert keras_kernel.shape == (1, 2, 3, 2)                        # [kh, kw, in, out]
    # torch [o, i, 0, w] is Keras [0, w, i, o]: element o=1, i=2, w=1 is 1*6 + 2*2 + 1 = 11.
    assert keras_kernel[0, 1, 2, 1] == 11 and keras_kernel[0, 0, 0, 0] == 0


def test_bgr_converters_reverse_only_the_input_channel_axis():
    kernel = np.arange(3 * 2).reshape(1, 1, 3, 2)                    # [kh, kw, in B G R, out]
    np.testing.assert_array_equal(weight_table.reverse_input_channels(kernel)[0, 0], [[4, 5], [2, 3], [0, 1]])
    torch_kernel = np.arange(2 * 3).reshape(2, 3, 1, 1)
    np.testing.assert_array_equal(weight_table.oihw_to_hwio_bgr(torch_kernel)[0, 0], [[2, 5], [1, 4], [0, 3]])
    assert weight_table.identity(kernel) is kernel


def test_suffixes_name_each_file_kind_once():
    assert weight_table.TORCH_WEIGHTS_SUFFIXES == (".pth", ".pt", ".safetensors")
    assert weight_table.WEIGHTS_FILE_SUFFIXES == (".h5", ".hdf5", ".pth", ".pt", ".safetensors")


def _dense_model():
    inputs = keras.Input((2,))
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(inputs))


def test_assign_converts_every_row_or_assigns_nothing():
    model = _dense_model()
    before = model.get_layer("fc").kernel.numpy()
    table = [Entry("w", "fc", KERNEL, np.transpose), Entry("b", "fc", BIAS, weight_table.identity)]
    kernel_out_in = np.arange(6, dtype=np.float64).reshape(3, 2)      # stored [out, in] as torch's Linear
    with pytest.raises(ValueError, match=r"cannot load the backbone from f.pth: 1 of 2 variables missing or "
                                         r"mismatched:\n  b: not in the file \(for fc bias \(3,\)\)"):
        weight_table.assign(model, {"w": kernel_out_in}, table, "f.pth")
    np.testing.assert_array_equal(model.get_layer("fc").kernel.numpy(), before)   # nothing assigned
    with pytest.raises(ValueError, match=r"b: file shape \(2,\) gives \(2,\), but fc bias is \(3,\)"):
        weight_table.assign(model, {"w": kernel_out_in, "b": np.zeros(2)}, table, "f.pth")
    assert weight_table.assign(model, {"w": kernel_out_in, "b": np.array([1, 2, 3])}, table, "f.pth") == 2
    np.testing.assert_array_equal(model.get_layer("fc").kernel.numpy(), kernel_out_in.T)
    np.testing.assert_array_equal(model.get_layer("fc").bias.numpy(), [1, 2, 3])
    assert model.get_layer("fc").kernel.dtype == "float32"
