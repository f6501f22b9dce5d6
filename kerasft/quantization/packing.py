"""Packing 4-bit codes two to a byte, in numpy (offline) and keras.ops (on the fly).

Layout: along axis 0, row `2i` goes to the low nibble and row `2i + 1` to the
high nibble of packed row `i`. An odd number of rows is padded with a zero
row, which `unpack_int4` drops again when told the original length.
"""

from typing import Any

import numpy as np
from keras import ops


def packed_length(length: int) -> int:
    """Number of packed rows that hold `length` 4-bit rows."""
    return (int(length) + 1) // 2


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Packs unsigned 4-bit codes, two per byte, along axis 0.

    Args:
        codes: integer array of any shape with at least one axis, values in
            [0, 15].

    Returns:
        A `uint8` array of shape `(ceil(codes.shape[0] / 2), *codes.shape[1:])`.

    Raises:
        ValueError: if a code is outside [0, 15] or `codes` is a scalar.
    """
    codes = np.asarray(codes)
    if codes.ndim == 0:
        raise ValueError(
            f"`codes` must have at least one axis. Received: codes.shape={codes.shape}"
        )
    if codes.size and (codes.min() < 0 or codes.max() > 15):
        raise ValueError(
            "`codes` must lie in [0, 15] to be packed as 4 bits. Received: "
            f"min={codes.min()}, max={codes.max()}"
        )
    codes = codes.astype("uint8")
    if codes.shape[0] % 2:
        pad = np.zeros((1,) + codes.shape[1:], dtype="uint8")
        codes = np.concatenate([codes, pad], axis=0)
    return (codes[0::2] | (codes[1::2] << 4)).astype("uint8")


def unpack_int4(packed: np.ndarray, length: int | None = None) -> np.ndarray:
    """Inverse of `pack_int4` in numpy.

    Args:
        packed: `uint8` array from `pack_int4`.
        length: the original length of axis 0; defaults to `2 * packed.shape[0]`.

    Returns:
        A `uint8` array of codes in [0, 15] with `length` rows.
    """
    packed = np.asarray(packed).astype("uint8")
    low = packed & 0x0F
    high = packed >> 4
    codes = np.stack([low, high], axis=1).reshape((-1,) + packed.shape[1:])
    if length is None:
        length = codes.shape[0]
    return codes[:length]


def unpack_int4_ops(packed: Any, length: int) -> Any:
    """Inverse of `pack_int4` with `keras.ops`, for use inside a layer's `call`.

    Args:
        packed: an integer tensor `(ceil(length / 2), ...)` of packed bytes
            (stored as `uint8`).
        length: the original length of axis 0 (a Python int).

    Returns:
        An `int32` tensor of codes in [0, 15] with `length` rows.
    """
    packed = ops.cast(packed, "int32")
    low = ops.bitwise_and(packed, 15)
    high = ops.bitwise_and(ops.right_shift(packed, 4), 15)
    codes = ops.stack([low, high], axis=1)
    codes = ops.reshape(codes, (-1,) + tuple(packed.shape[1:]))
    if codes.shape[0] != length:
        codes = codes[:length]
    return codes
