"""protos/wire.py's paths that mutation testing showed untested: packed_size of arrays with more or
fewer than one dimension, and the whole message naming which BYTES element runs past the end of
the data (its index, its length prefix and the bytes left after that prefix), both when the count
is checked against the data first (_why_too_short walks the prefixes) and when the elements are read.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from protos import wire


def framed(*items: bytes) -> bytes:
    """The wire form written out by hand, independent of pack_bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def prefix(length: int) -> bytes:
    """A length prefix alone (its element's bytes may follow, or be cut short)."""
    return struct.pack("<I", length)


def cut_short(index: int, length: int, left: int) -> str:
    return (
        f"BYTES element {index} is cut short: its length prefix says {length} bytes, "
        f"the data has {left} after it"
    )


@pytest.mark.parametrize(
    ("array", "size"),
    [
        (np.array([[b"a", b"bc"], [b"", b"def"]], dtype=object), 4 * 4 + 1 + 2 + 0 + 3),
        (np.array([[["é"], [b"xy"]]], dtype=object), 4 * 2 + 2 + 2),  # 3-D, a str as UTF-8
        (np.array(b"abc", dtype=object), 4 + 3),  # 0-D: one element
        (np.empty((2, 0), dtype=object), 0),
    ],
)
def test_packed_size_counts_every_element_of_any_shape(array: np.ndarray, size: int) -> None:
    assert wire.packed_size(array) == size
    assert len(wire.pack_bytes(array)) == size


@pytest.mark.parametrize(
    ("data", "count", "message"),
    [
        # element 0: its prefix (at offset 0) says 10 bytes, 3 follow it
        (prefix(10) + b"abc", 2, cut_short(0, 10, 3)),
        # element 1 after a whole element 0: its prefix at offset 6 says 100, 3 follow (of 13)
        (framed(b"ab") + prefix(100) + b"xyz", 4, cut_short(1, 100, 3)),
        # element 2 after two whole ones of different lengths (offset 12 after its prefix)
        (framed(b"a", b"bcd") + prefix(9) + b"zz", 5, cut_short(2, 9, 2)),
        # a prefix that ends exactly at the end of the data, saying 5 bytes: none follow it
        (framed(b"ab") + prefix(5), 3, cut_short(1, 5, 0)),
        (prefix(1), 2, cut_short(0, 1, 0)),
    ],
)
def test_a_count_too_large_for_the_data_names_the_element_cut_short(
    data: bytes, count: int, message: str
) -> None:
    assert count * 4 > len(data)  # the count is refused before any element is read
    with pytest.raises(wire.ElementCutShort) as caught:
        wire.unpack_bytes(data, count)
    assert str(caught.value) == message
    with pytest.raises(wire.ElementCutShort) as caught_view:
        wire.unpack_bytes(memoryview(data), count)
    assert str(caught_view.value) == message


@pytest.mark.parametrize(
    ("data", "count"),
    [
        # whole elements, the last (empty) one's prefix ending exactly at the end of the data
        (framed(b"ab", b""), 3),
        (framed(b""), 2),
        # whole elements, then part of a prefix
        (framed(b"ab") + b"\x00\x00", 3),
        (framed(b"a", b"bcd") + b"\x07", 4),
        (b"", 1),
    ],
)
def test_a_count_too_large_for_whole_elements_says_how_many_bytes_cannot_hold_it(
    data: bytes, count: int
) -> None:
    with pytest.raises(ValueError) as caught:
        wire.unpack_bytes(data, count)
    assert not isinstance(caught.value, wire.ElementCutShort)
    assert str(caught.value) == (
        f"{len(data)} bytes of BYTES data cannot hold {count} elements (each has a 4-byte length)"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (framed(b"ab") + prefix(100) + b"xyz", cut_short(1, 100, 3)),
        (framed(b"a", b"bcd") + prefix(9) + b"zz", cut_short(2, 9, 2)),
        (framed(b"ab") + prefix(5), cut_short(1, 5, 0)),
    ],
)
def test_the_element_cut_short_is_named_alike_whether_or_not_the_count_fits_the_data(
    data: bytes, message: str
) -> None:
    """A count small enough for the data reads the elements; a larger one walks the prefixes
    first: the same element is named either way."""
    fitting = len(data) // 4
    for count in (fitting, fitting + 1, fitting + 5):
        with pytest.raises(wire.ElementCutShort) as caught:
            wire.unpack_bytes(data, count)
        assert str(caught.value) == message, count
