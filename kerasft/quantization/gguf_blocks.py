"""llama.cpp GGUF block types, dequantized on the fly with `keras.ops`.

A GGUF tensor stores each row (the contracted, fastest axis) as blocks of 32
values (Q4_0 ... Q8_0) or 256 values (the K-quants), each block a fixed
number of bytes: fp16 scales, packed low bits, high-bit planes, 6-bit
sub-block scales. `dequantize_rows(data, tensor_type, row_size)` turns a
`uint8` tensor holding those bytes, shape `(..., row_bytes)`, into float32
values, shape `(..., row_size)`, with shifts, masks and reshapes only, so it
runs inside a jitted JAX or a torch training step; the results are bit-equal
to `gguf.quants.dequantize` (each product is formed in the same order, in
float32). The block layouts follow ggml's `ggml-common.h` (`block_q4_0`,
`block_q4_K`, ...) as `gguf.quants` implements them.

F32, F16 and BF16 tensors are not blocks: they are stored in their own dtype
and only cast (`FLOAT_TYPES`).
"""

import math

from keras import ops

FLOAT_TYPES = ("F32", "F16", "BF16")
# Block types dequantized here, and the ones `gguf.quants.quantize` can also
# write (K-quants are read-only in the `gguf` package).
BLOCK_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
QUANTIZABLE_BLOCK_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
GGUF_TENSOR_TYPES = FLOAT_TYPES + BLOCK_TYPES
FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}

# (values per block, bytes per block), as `gguf.GGML_QUANT_SIZES`.
BLOCK_SIZES = {
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
    "Q8_0": (32, 34), "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144),
    "Q5_K": (256, 176), "Q6_K": (256, 210),
}  # fmt: skip


def check_tensor_type(tensor_type: str, argument: str = "tensor_type") -> str:
    """Returns `tensor_type` (a name such as `"Q4_K"`) or raises naming `argument`."""
    name = getattr(tensor_type, "name", tensor_type)
    if name not in GGUF_TENSOR_TYPES:
        raise ValueError(
            f"`{argument}` must be one of {', '.join(GGUF_TENSOR_TYPES)}. "
            f"Received: {argument}={tensor_type!r}"
        )
    return name


def row_bytes(tensor_type: str, row_size: int) -> int:
    """Bytes (block types) or values (float types) one row of `row_size` values takes."""
    tensor_type = check_tensor_type(tensor_type)
    if tensor_type in FLOAT_TYPES:
        return row_size
    block_size, type_size = BLOCK_SIZES[tensor_type]
    if row_size % block_size:
        raise ValueError(
            f"{tensor_type} rows hold a multiple of {block_size} values. Received: "
            f"row_size={row_size}"
        )
    return row_size // block_size * type_size


def storage_dtype(tensor_type: str) -> str:
    """The variable dtype that holds a tensor of this type (`uint8` for blocks)."""
    tensor_type = check_tensor_type(tensor_type)
    return FLOAT_DTYPES.get(tensor_type, "uint8")


def tensor_bytes(tensor_type: str, shape: tuple) -> int:
    """Bytes of a GGUF tensor of logical `shape` (rows last) in `tensor_type`."""
    tensor_type = check_tensor_type(tensor_type)
    rows = math.prod(shape[:-1])
    if tensor_type in FLOAT_TYPES:
        return rows * shape[-1] * (4 if tensor_type == "F32" else 2)
    return rows * row_bytes(tensor_type, shape[-1])


# ------------------------------------------------------------------ helpers
def _f16(two_bytes):
    """`(..., 2)` uint8 little-endian fp16 -> `(..., 1)` float32 (exact)."""
    return ops.cast(ops.view(two_bytes, "float16"), "float32")


def _int(data):
    return ops.cast(data, "int32")


def _signed_byte(values):
    """int32 values 0..255 read as int8."""
    return values - 256 * ops.right_shift(values, 7)


def _shifted(values, shifts, axis):
    """`(values >> shift)` for each shift, stacked on a new axis at `axis`."""
    shifts = ops.convert_to_tensor(shifts, dtype="int32")
    shape = [1] * (len(values.shape) + 1)
    shape[axis] = -1
    return ops.right_shift(ops.expand_dims(values, axis), ops.reshape(shifts, shape))


def _low_high_nibbles(qs):
    """`(n, 16)` bytes -> `(n, 32)`: low nibbles (values 0-15), then high (16-31)."""
    return ops.concatenate([ops.bitwise_and(qs, 15), ops.right_shift(qs, 4)], axis=-1)


def _bits_of(qh, count):
    """`(n, count // 8)` bytes -> `(n, count)` bits, bit j of byte j // 8 first."""
    bits = ops.bitwise_and(_shifted(qh, list(range(8)), axis=-1), 1)
    return ops.reshape(bits, (-1, count))


def _k_scales_mins(scales):
    """Q4_K/Q5_K 12 bytes -> (8 six-bit scales, 8 six-bit mins), int32."""
    d, m, md = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = ops.concatenate(
        [ops.bitwise_and(d, 63),
         ops.bitwise_or(ops.bitwise_and(md, 15), ops.bitwise_and(ops.right_shift(d, 2), 48))],
        axis=-1,
    )  # fmt: skip
    mins = ops.concatenate(
        [ops.bitwise_and(m, 63),
         ops.bitwise_or(ops.right_shift(md, 4), ops.bitwise_and(ops.right_shift(m, 2), 48))],
        axis=-1,
    )  # fmt: skip
    return sc, mins


def _float(values):
    return ops.cast(values, "float32")


# ----------------------------------------------------- one function per type
# Each takes `(blocks, bytes)` uint8 and the same blocks as int32, returns
# `(blocks, values)` float32.
def _q4_0(raw, b):
    q = _low_high_nibbles(b[:, 2:18]) - 8
    return _f16(raw[:, 0:2]) * _float(q)


def _q4_1(raw, b):
    q = _low_high_nibbles(b[:, 4:20])
    return _f16(raw[:, 0:2]) * _float(q) + _f16(raw[:, 2:4])


def _q5_0(raw, b):
    q = ops.bitwise_or(_low_high_nibbles(b[:, 6:22]), ops.left_shift(_bits_of(b[:, 2:6], 32), 4))
    return _f16(raw[:, 0:2]) * _float(q - 16)


def _q5_1(raw, b):
    q = ops.bitwise_or(_low_high_nibbles(b[:, 8:24]), ops.left_shift(_bits_of(b[:, 4:8], 32), 4))
    return _f16(raw[:, 0:2]) * _float(q) + _f16(raw[:, 2:4])


def _q8_0(raw, b):
    return _float(_signed_byte(b[:, 2:34])) * _f16(raw[:, 0:2])


def _q2_k(raw, b):
    scales, qs = b[:, 0:16], b[:, 16:80]
    d, dmin = _f16(raw[:, 80:82]), _f16(raw[:, 82:84])
    dl = ops.expand_dims(d * _float(ops.bitwise_and(scales, 15)), -1)
    ml = ops.expand_dims(dmin * _float(ops.right_shift(scales, 4)), -1)
    q = ops.reshape(_shifted(ops.reshape(qs, (-1, 2, 32)), [0, 2, 4, 6], axis=2), (-1, 16, 16))
    q = _float(ops.bitwise_and(q, 3))
    return ops.reshape(dl * q - ml, (-1, 256))


def _q3_k(raw, b):
    hmask, qs, scales = b[:, 0:32], b[:, 32:96], b[:, 96:108]
    d = _f16(raw[:, 108:110])
    low = ops.reshape(_shifted(scales[:, 0:8], [0, 4], axis=1), (-1, 16))
    high = ops.reshape(_shifted(scales[:, 8:12], [0, 2, 4, 6], axis=1), (-1, 16))
    sc = ops.bitwise_or(ops.bitwise_and(low, 15), ops.left_shift(ops.bitwise_and(high, 3), 4))
    dl = ops.expand_dims(d * _float(sc - 32), -1)
    ql = ops.reshape(_shifted(ops.reshape(qs, (-1, 2, 32)), [0, 2, 4, 6], axis=2), (-1, 16, 16))
    qh = ops.reshape(_shifted(ops.reshape(hmask, (-1, 1, 32)), list(range(8)), axis=2), (-1, 16, 16))
    # A set high bit means no offset, a clear one subtracts 4.
    q = ops.bitwise_and(ql, 3) - 4 * (1 - ops.bitwise_and(qh, 1))
    return ops.reshape(dl * _float(q), (-1, 256))


def _q4_k(raw, b):
    d, dmin = _f16(raw[:, 0:2]), _f16(raw[:, 2:4])
    sc, mins = _k_scales_mins(b[:, 4:16])
    dl = ops.expand_dims(d * _float(sc), -1)
    ml = ops.expand_dims(dmin * _float(mins), -1)
    q = _shifted(ops.reshape(b[:, 16:144], (-1, 4, 32)), [0, 4], axis=2)
    q = _float(ops.reshape(ops.bitwise_and(q, 15), (-1, 8, 32)))
    return ops.reshape(dl * q - ml, (-1, 256))


def _q5_k(raw, b):
    d, dmin = _f16(raw[:, 0:2]), _f16(raw[:, 2:4])
    sc, mins = _k_scales_mins(b[:, 4:16])
    dl = ops.expand_dims(d * _float(sc), -1)
    ml = ops.expand_dims(dmin * _float(mins), -1)
    ql = _shifted(ops.reshape(b[:, 48:176], (-1, 4, 32)), [0, 4], axis=2)
    ql = ops.reshape(ops.bitwise_and(ql, 15), (-1, 8, 32))
    qh = _shifted(ops.reshape(b[:, 16:48], (-1, 1, 32)), list(range(8)), axis=2)
    qh = ops.reshape(ops.bitwise_and(qh, 1), (-1, 8, 32))
    q = _float(ops.bitwise_or(ql, ops.left_shift(qh, 4)))
    return ops.reshape(dl * q - ml, (-1, 256))


def _q6_k(raw, b):
    scales = _float(_signed_byte(b[:, 192:208]))
    dl = ops.expand_dims(_f16(raw[:, 208:210]) * scales, -1)
    ql = _shifted(ops.reshape(b[:, 0:128], (-1, 2, 64)), [0, 4], axis=2)
    ql = ops.reshape(ops.bitwise_and(ql, 15), (-1, 8, 32))
    qh = _shifted(ops.reshape(b[:, 128:192], (-1, 2, 32)), [0, 2, 4, 6], axis=2)
    qh = ops.reshape(ops.bitwise_and(qh, 3), (-1, 8, 32))
    q = ops.bitwise_or(ql, ops.left_shift(qh, 4)) - 32
    return ops.reshape(dl * _float(ops.reshape(q, (-1, 16, 16))), (-1, 256))


_DEQUANTIZE = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}  # fmt: skip


def dequantize_rows(data, tensor_type: str, row_size: int):
    """Dequantizes GGUF rows with `keras.ops` into float32.

    Args:
        data: a tensor of shape `(..., row_bytes(tensor_type, row_size))`,
            `uint8` for block types (the GGUF bytes as they are in the file),
            or of the float type's own dtype for F32 / F16 / BF16.
        tensor_type: a name in `GGUF_TENSOR_TYPES`, e.g. `"Q4_K"`.
        row_size: values per row.

    Returns:
        A float32 tensor of shape `(..., row_size)`, equal to
        `gguf.quants.dequantize` of the same bytes.
    """
    tensor_type = check_tensor_type(tensor_type)
    if tensor_type in FLOAT_TYPES:
        return ops.cast(data, "float32")
    block_size, type_size = BLOCK_SIZES[tensor_type]
    expected = row_bytes(tensor_type, row_size)
    leading = tuple(data.shape[:-1])
    if data.shape[-1] != expected:
        raise ValueError(
            f"{tensor_type} rows of {row_size} values take {expected} bytes. Received: "
            f"data of shape {tuple(data.shape)}"
        )
    raw = ops.reshape(data, (-1, type_size))
    values = _DEQUANTIZE[tensor_type](raw, _int(raw))
    return ops.reshape(values, leading + (row_size,))
