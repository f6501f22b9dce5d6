"""A fast, read-only GGUF parser for metadata and tensor bytes.

`gguf.GGUFReader` builds a numpy view per array element while parsing, which
for Gemma's 262,144-entry vocabulary takes 10 to 30 seconds on a laptop CPU,
longer than loading all the weights. `read_gguf` parses the same format (the
GGUF v2/v3 spec, using the `gguf` package's type constants) in well under a
second and memory-maps the tensor data; dequantization is still done by
`gguf.quants.dequantize`. The tests check it against `gguf.GGUFReader`.
"""

import dataclasses
import os
import struct

import numpy as np

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# GGUFValueType -> struct format of one scalar (STRING=8 and ARRAY=9 are special).
_SCALAR_FORMATS = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
    10: "Q", 11: "q", 12: "d",
}  # fmt: skip
_NUMPY_DTYPES = {
    0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
    6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64,
}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file.

    Attributes:
        name: llama.cpp tensor name.
        shape: Logical shape, slowest axis first (the reverse of GGUF's `ne`).
        tensor_type: A `gguf.GGMLQuantizationType`.
        data: Memory-mapped `uint8` array of shape `shape[:-1] + (row_bytes,)`,
            ready for `gguf.quants.dequantize(data, tensor_type)`.
    """

    name: str
    shape: tuple
    tensor_type: object
    data: np.ndarray


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    """Metadata and tensors of a GGUF file.

    Attributes:
        metadata: `{key: value}`; arrays are Python lists, strings `str`.
        tensors: `{name: GGUFTensor}` in file order.
    """

    metadata: dict
    tensors: dict


class _Cursor:
    def __init__(self, buffer, path):
        self.buffer = buffer
        self.offset = 0
        self.path = path

    def unpack(self, fmt):
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.buffer):
            raise ValueError(
                f"The GGUF file ends in the middle of its header. Received: "
                f"path={self.path!r} of {len(self.buffer)} bytes."
            )
        values = struct.unpack_from("<" + fmt, self.buffer, self.offset)
        self.offset += size
        return values[0] if len(values) == 1 else values

    def string(self):
        length = self.unpack("Q")
        start, self.offset = self.offset, self.offset + length
        if self.offset > len(self.buffer):
            raise ValueError(
                f"The GGUF file ends in the middle of a string. Received: path={self.path!r}."
            )
        return bytes(self.buffer[start : self.offset]).decode("utf-8", errors="replace")

    def value(self, value_type):
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.unpack("IQ")
            if item_type == _STRING:
                return [self.string() for _ in range(count)]
            if item_type in _NUMPY_DTYPES:
                dtype = np.dtype(_NUMPY_DTYPES[item_type]).newbyteorder("<")
                array = np.frombuffer(self.buffer, dtype, count, self.offset)
                self.offset += count * dtype.itemsize
                return array.tolist()
            return [self.value(item_type) for _ in range(count)]  # nested arrays
        if value_type not in _SCALAR_FORMATS:
            raise ValueError(
                f"Unknown GGUF metadata value type. Received: value_type={value_type} "
                f"in path={self.path!r}."
            )
        return self.unpack(_SCALAR_FORMATS[value_type])


def read_gguf(path) -> GGUFFile:
    """Parses a little-endian GGUF (version 2 or 3) file.

    Args:
        path: Path of the `.gguf` file.

    Returns:
        A `GGUFFile` whose tensor data are memory-mapped views of the file.

    Raises:
        ValueError: If the file is not a little-endian GGUF v2/v3 file, is
            truncated, or has a tensor of a type the `gguf` package does not know.
    """
    import gguf

    path = os.fspath(path)
    buffer = np.memmap(path, dtype=np.uint8, mode="r")
    cursor = _Cursor(buffer, path)
    magic = bytes(buffer[:4])
    cursor.offset = 4
    version = cursor.unpack("I") if magic == _MAGIC else None
    if version not in (2, 3):
        raise ValueError(
            "Not a little-endian GGUF v2/v3 file. Received: "
            f"path={path!r} with magic={magic!r}, version={version}."
        )
    tensor_count, kv_count = cursor.unpack("QQ")
    metadata = {}
    for _ in range(kv_count):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.unpack("I"))

    infos = []
    for _ in range(tensor_count):
        name = cursor.string()
        n_dims = cursor.unpack("I")
        dims = [cursor.unpack("Q") for _ in range(n_dims)]
        raw_type, offset = cursor.unpack("IQ")
        try:
            tensor_type = gguf.GGMLQuantizationType(raw_type)
        except ValueError:
            raise ValueError(
                f"Tensor {name!r} has a GGML type the `gguf` package does not know. "
                f"Received: tensor_type={raw_type} in path={path!r}."
            ) from None
        infos.append((name, dims, tensor_type, offset))

    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
    data_start = -(-cursor.offset // alignment) * alignment
    tensors = {}
    for name, dims, tensor_type, offset in infos:
        block_size, type_size = gguf.GGML_QUANT_SIZES[tensor_type]
        shape = tuple(int(n) for n in reversed(dims)) or (1,)
        row_bytes = shape[-1] // block_size * type_size
        num_bytes = int(np.prod(shape[:-1], dtype=np.int64)) * row_bytes
        start = data_start + offset
        if shape[-1] % block_size or start + num_bytes > len(buffer):
            raise ValueError(
                f"Tensor {name!r} does not fit the file. Received: shape={shape}, "
                f"tensor_type={tensor_type.name}, {num_bytes} bytes at offset {start} "
                f"of a {len(buffer)}-byte file {path!r}."
            )
        data = buffer[start : start + num_bytes].reshape(*shape[:-1], row_bytes)
        tensors[name] = GGUFTensor(name, shape, tensor_type, data)
    return GGUFFile(metadata, tensors)
