"""A sample chunk's arrays: how the writer lays samples out in an `.npz`, and how BYTES are read back.

Numeric tensors are `in:<name>` / `out:<name>`, the samples' rows concatenated. A BYTES tensor is
`bytes:in:<name>` (uint8: every value's bytes, concatenated in the tensor's element order, sample
after sample) and `len:in:<name>` (int64: each value's length, shaped like the rows concatenated),
so a chunk is about the size of the bytes sent and exact (NULs, empty values), loadable without
pickle. Fixed-width numpy bytes had padded every value to the widest of the chunk: one 1 MiB value
among 99 empty ones made a 200 MiB chunk. `bytes_tensor` reads every layout chunks have had.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

AnyArray = npt.NDArray[np.generic]
BYTES = "bytes:"  # + "in:<name>" / "out:<name>": a BYTES tensor's values concatenated (uint8)
LENGTHS = "len:"  # + "in:<name>" / "out:<name>": each BYTES value's length in bytes
LOAD_KEY = "load_ns"  # the id of the load that sampled a chunk (absent in files before it)
# "in:<name>" / "out:<name>" of the tensors the server's drift monitor pools as variable-length (a
# -1 dim in the config): `sluiceway drift` has no config, and had scored them per column.
VARIABLE_KEY = "variable"
LENGTH_BYTES = 8  # a value's int64 length, counted in a sample's size
Layout = tuple[tuple[str, str, tuple[int, ...]], ...]


class Sampled(Protocol):
    """What the layout needs of a sample (sampling_writer.Sample)."""

    @property
    def inputs(self) -> Mapping[str, AnyArray] | None: ...

    @property
    def outputs(self) -> Mapping[str, AnyArray]: ...

    @property
    def time_ns(self) -> int: ...


def is_bytes(array: AnyArray) -> bool:
    return array.dtype.kind in "OSU"


def stored_bytes(array: AnyArray) -> int:
    """What a tensor takes in a chunk: a BYTES tensor its values' bytes and lengths (an object
    array's nbytes is 8 a value, whatever the value: 1 MiB values had passed as 8 bytes)."""
    if not is_bytes(array):
        return int(array.nbytes)
    values = _values(array)
    return sum(map(len, values)) + LENGTH_BYTES * len(values)


def layout(sample: Sampled) -> Layout:
    """What must match for samples to share a chunk: names, kinds, and shapes past the rows."""

    def one(prefix: str, tensors: Mapping[str, AnyArray]) -> list[tuple[str, str, tuple[int, ...]]]:
        return [
            (prefix + name, "S" if is_bytes(a) else a.dtype.str, a.shape[1:]) for name, a in tensors.items()
        ]

    return tuple(one("in:", sample.inputs or {}) + one("out:", sample.outputs))


def chunk_arrays(
    run: Sequence[Sampled], load_ns: int, variable: frozenset[str] = frozenset()
) -> dict[str, AnyArray]:
    """Every tensor's rows of the run concatenated (BYTES: unpadded, with their lengths), plus each
    sample's rows and time, the load that sampled them (one source: one load), and the keys of its
    variable-length tensors (VARIABLE_KEY)."""
    arrays: dict[str, AnyArray] = {}
    first = run[0]
    for prefix, tensors in (("in:", first.inputs or {}), ("out:", first.outputs)):
        for name in tensors:
            parts = [_at_least_1d(((s.inputs or {}) if prefix == "in:" else s.outputs)[name]) for s in run]
            if is_bytes(parts[0]):
                values = [value for part in parts for value in _values(part)]
                shape = (sum(part.shape[0] for part in parts), *parts[0].shape[1:])
                arrays[LENGTHS + prefix + name] = np.array(list(map(len, values)), np.int64).reshape(shape)
                arrays[BYTES + prefix + name] = np.frombuffer(b"".join(values), dtype=np.uint8)
            else:
                arrays[prefix + name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    arrays["rows"] = np.array([_rows(s) for s in run], dtype=np.int64)
    arrays["time_ns"] = np.array([s.time_ns for s in run], dtype=np.int64)
    arrays[LOAD_KEY] = np.array([load_ns], dtype=np.int64)
    if variable:
        arrays[VARIABLE_KEY] = np.array(sorted(variable), dtype=np.str_)
    return arrays


def bytes_tensor(data: Mapping[str, AnyArray], key: str) -> AnyArray:
    """A chunk's BYTES tensor `key` ("in:<name>" / "out:<name>") as sent: an object array of bytes,
    the rows of the chunk's samples (`rows` splits them). Reads chunks of every layout: unpadded
    values (`bytes:` + `len:`), fixed-width values with lengths, fixed-width values alone (written
    before the lengths: trailing NULs lost)."""
    if BYTES + key in data:
        return split_values(data[BYTES + key], data[LENGTHS + key])
    if LENGTHS + key in data:
        return exact_bytes(data[key], data[LENGTHS + key])
    values = data[key]
    out = np.empty(values.shape, dtype=object)
    out.reshape(-1)[:] = [bytes(value) for value in values.reshape(-1)]
    return out


def split_values(concatenated: AnyArray, lengths: AnyArray) -> AnyArray:
    """`bytes:<key>` cut by `len:<key>` into an object array of bytes, shaped like the lengths."""
    raw = concatenated.tobytes()
    sizes = lengths.reshape(-1).tolist()
    if sum(sizes) != len(raw) or min(sizes, default=0) < 0:
        raise ValueError(f"the lengths add up to {sum(sizes)} bytes, the values hold {len(raw)}")
    out = np.empty(lengths.shape, dtype=object)
    values: list[bytes] = []
    start = 0
    for size in sizes:
        values.append(raw[start : start + size])
        start += size
    out.reshape(-1)[:] = values
    return out


def exact_bytes(values: AnyArray, lengths: AnyArray) -> AnyArray:
    """A chunk of the earlier layout (fixed-width `in:<name>` plus `len:in:<name>`) as sent: values
    padded back with the NULs numpy dropped; an object array of bytes."""
    out = np.empty(values.shape, dtype=object)
    out.reshape(-1)[:] = [
        bytes(value).ljust(int(length), b"\0")
        for value, length in zip(values.reshape(-1), lengths.reshape(-1), strict=True)
    ]
    return out


def _values(array: AnyArray) -> list[bytes]:
    """A BYTES tensor's values in element order; str (a model's string output) as UTF-8, the wire's
    form (fixed-width bytes had refused non-ASCII text)."""
    return [_as_bytes(value) for value in array.reshape(-1).tolist()]


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"BYTES values must be bytes or str, got {type(value).__name__}")


def _rows(sample: Sampled) -> int:
    for array in sample.outputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0


def _at_least_1d(array: AnyArray) -> AnyArray:
    return array.reshape(1) if array.ndim == 0 else array
