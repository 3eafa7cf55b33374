"""protos/wire.py: the BYTES wire form (4-byte little-endian length, then the bytes) both ways."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from protos import wire


def framed(*items: bytes) -> bytes:
    """The wire form written out by hand, independent of pack_bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


@pytest.mark.parametrize(
    "items",
    [
        [b"ab", b""],  # a trailing empty element: its length prefix ends the data exactly
        [b""],
        [b"", b""],
        [b"", b"x", b""],
        [b"abc", "é".encode(), b"\x00\xff"],
    ],
)
def test_unpack_reads_every_element_including_empty_ones_at_the_end(items: list[bytes]) -> None:
    data = framed(*items)
    unpacked = wire.unpack_bytes(data, len(items))
    assert unpacked.dtype == object and unpacked.shape == (len(items),)
    assert list(unpacked) == items
    assert wire.pack_bytes(np.array(items, dtype=object)) == data


def test_zero_elements_are_zero_bytes() -> None:
    assert wire.unpack_bytes(b"", 0).shape == (0,)
    assert wire.pack_bytes(np.array([], dtype=object)) == b""


def test_pack_encodes_str_as_utf8_and_refuses_other_types() -> None:
    assert wire.pack_bytes(np.array(["é", ""], dtype=object)) == framed("é".encode(), b"")
    with pytest.raises(TypeError, match="BYTES elements must be bytes or str, got int"):
        wire.pack_bytes(np.array([5], dtype=object))


@pytest.mark.parametrize(
    ("data", "count", "message"),
    [
        (framed(b"ab"), 2, "6 bytes of BYTES data cannot hold 2 elements"),
        (framed(b"abcdefgh"), 2, "BYTES data ends after 1 of 2 elements"),
        (framed(b"abcdefgh") + b"\x00\x00\x00", 2, "BYTES data ends after 1 of 2 elements"),  # cut prefix
        (framed(b"ab")[:-1], 1, "BYTES element 0 is cut short"),
        (framed(b"ab", b""), 1, "4 bytes left after 1 BYTES elements"),
        (b"\x00", 0, "1 bytes left after 0 BYTES elements"),
    ],
)
def test_malformed_data_is_a_value_error_saying_what_is_wrong(data: bytes, count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wire.unpack_bytes(data, count)
