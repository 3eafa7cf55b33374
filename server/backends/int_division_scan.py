"""Whether a model file can hold an integer Div or Mod node, read without its weights, so that the
integer division guard (int_division_guard.py) skips its `onnx` parse for models that cannot: that
parse took ~90 ms of each instance's load for the 47 MB demo resnet, this look ~0.5 ms.

A node's op_type is stored as its plain UTF-8 bytes, so a model holding neither b"Div" nor b"Mod"
outside its weights has no such node. Nodes live in the graph (subgraphs inside their nodes) and in
the model-local functions, both in the file; the weights (a graph's `initializer` and
`sparse_initializer`, TensorProtos) cannot hold one, and external data files hold only tensors. The
file is mapped, not read, and the protobuf wire format walked to step over the weights: the
`protobuf` library cannot parse a message lazily, and onnx's parse copies every weight. Anything
the walk does not understand answers True: the full look then decides, as before.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_WEIGHTS = frozenset({5, 15})  # GraphProto.initializer, GraphProto.sparse_initializer
_MARKS = (b"Div", b"Mod")
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5  # protobuf wire types (groups: refused)


class _NotWalkable(Exception):
    pass


def may_divide(path: Path) -> bool:
    """False only when the model at `path` has no Div or Mod node (see the module's docstring)."""
    try:
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _marked(data)
    except (OSError, ValueError, _NotWalkable):  # unreadable, empty (mmap refuses), not protobuf
        return True


def _marked(data: mmap.mmap) -> bool:
    for number, start, end in _fields(data, 0, len(data)):
        if number != _MODEL_GRAPH:
            if _holds_mark(data, start, end):
                return True
            continue
        for inner, inner_start, inner_end in _fields(data, start, end):
            if inner not in _GRAPH_WEIGHTS and _holds_mark(data, inner_start, inner_end):
                return True
    return False


def _holds_mark(data: mmap.mmap, start: int, end: int) -> bool:
    return any(data.find(mark, start, end) >= 0 for mark in _MARKS)


def _fields(data: mmap.mmap, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The length-delimited fields of the message in data[pos:end]: (field number, start, end);
    scalar fields are stepped over."""
    while pos < end:
        key, pos = _varint(data, pos, end)
        wire = key & 7
        if wire == _VARINT:
            _, pos = _varint(data, pos, end)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _LENGTH:
            size, pos = _varint(data, pos, end)
            if pos + size > end:
                raise _NotWalkable
            yield key >> 3, pos, pos + size
            pos += size
        else:
            raise _NotWalkable
    if pos != end:
        raise _NotWalkable


def _varint(data: mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise _NotWalkable
