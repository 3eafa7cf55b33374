"""Facts of the protocol's tensor wire form shared by the server and the clients (hand-written).

BYTES elements travel as a 4-byte little-endian length followed by the bytes; typed `contents`
carry each datatype in one field (FP16 and BF16 have none: raw bytes only, 2 bytes an element).
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

LENGTH = struct.Struct("<I")

CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# The element type each numeric contents field carries on the wire: INT8 and INT16 travel as
# int32, UINT8 and UINT16 as uint32 (a receiver range-checks them).
CONTENTS_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}


def pack_bytes(array: npt.NDArray[np.generic]) -> bytes:
    """BYTES elements (bytes, or str encoded as UTF-8) in the length-prefixed raw form."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = _element(item)
        parts.append(LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def packed_size(array: npt.NDArray[np.generic]) -> int:
    """len(pack_bytes(array)), without building it: a region or message limit checked first."""
    return sum(LENGTH.size + len(_element(item)) for item in array.reshape(-1))


def _element(item: object) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    # bytes(5) would silently send five zero bytes
    raise TypeError(f"BYTES elements must be bytes or str, got {type(item).__name__}")


class ElementCutShort(ValueError):
    """BYTES data whose element's length prefix runs past the end of the data."""


def _cut_short(index: int, length: int, left: int) -> ElementCutShort:
    return ElementCutShort(
        f"BYTES element {index} is cut short: its length prefix says {length} bytes, "
        f"the data has {left} after it"
    )


def _why_too_short(data: bytes | memoryview, count: int) -> ValueError:
    """Why `data` cannot hold `count` elements: the first element whose length runs past the end
    (walking the prefixes only: at most len(data) / 4 steps), else too few bytes for the prefixes.
    A huge first prefix had been reported as a count of elements, not as the element it is."""
    offset = 0
    for index in range(count):
        if offset + LENGTH.size > len(data):
            break
        (length,) = LENGTH.unpack_from(data, offset)
        offset += LENGTH.size
        if offset + length > len(data):
            return _cut_short(index, length, len(data) - offset)
        offset += length
    return ValueError(
        f"{len(data)} bytes of BYTES data cannot hold {count} elements (each has a 4-byte length)"
    )


def unpack_bytes(data: bytes | memoryview, count: int) -> npt.NDArray[np.generic]:
    """`count` length-prefixed elements -> an object array of bytes; raises ValueError if malformed
    (ElementCutShort when an element's length runs past the end of the data).

    `count` comes from an untrusted shape: it is checked against the data (each element has a
    4-byte length) before anything is allocated for it."""
    if count * 4 > len(data):
        raise _why_too_short(data, count)
    items = np.empty(count, dtype=object)
    view = memoryview(data)
    offset = 0
    for i in range(count):
        if offset + 4 > len(data):
            raise ValueError(f"BYTES data ends after {i} of {count} elements")
        (length,) = LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + length > len(data):
            raise _cut_short(i, length, len(data) - offset)
        items[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} bytes left after {count} BYTES elements")
    return items
