import numpy as np
import pytest
from keras import ops

from kerasft.quantization.packing import pack_int4, packed_length, unpack_int4, unpack_int4_ops


def test_every_pair_of_the_16_values_round_trips():
    low, high = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    codes = np.stack([low.ravel(), high.ravel()])  # (2, 256): every (low, high) pair
    packed = pack_int4(codes)
    assert packed.dtype == np.uint8 and packed.shape == (1, 256)
    np.testing.assert_array_equal(packed[0], low.ravel() | (high.ravel() << 4))
    np.testing.assert_array_equal(unpack_int4(packed, 2), codes)
    np.testing.assert_array_equal(ops.convert_to_numpy(unpack_int4_ops(packed, 2)), codes)


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (5, 3), (9, 2, 3), (64, 17)])
def test_random_codes_round_trip_with_odd_shapes(shape):
    codes = np.random.default_rng(sum(shape)).integers(0, 16, shape)
    packed = pack_int4(codes)
    assert packed.shape == (packed_length(shape[0]),) + shape[1:]
    np.testing.assert_array_equal(unpack_int4(packed, shape[0]), codes)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(unpack_int4_ops(ops.convert_to_tensor(packed), shape[0])), codes
    )


def test_out_of_range_codes_raise():
    with pytest.raises(ValueError, match="min=0, max=16"):
        pack_int4(np.array([0, 16]))
    with pytest.raises(ValueError, match="codes.shape"):
        pack_int4(np.array(3))
