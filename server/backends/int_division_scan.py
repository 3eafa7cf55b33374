"""Whether a model file can hold an integer Div or Mod node, read without its weights, so that the
integer division guard (int_division_guard.py) skips its `onnx` parse for models that cannot: that
parse took ~90 ms of each instance's load for the 47 MB demo resnet, this look under 1 ms.

A node's op_type is stored as its plain UTF-8 bytes, so a model holding neither b"Div" nor b"Mod"
outside its weights has no such node. Nodes live in the graph (subgraphs inside their nodes) and in
the model-local functions, both in the file; the weights (a graph's `initializer` and
`sparse_initializer`, TensorProtos) cannot hold one, and external data files hold only tensors. The
protobuf wire format is walked with reads and seeks, stepping over the weights unread: the
`protobuf` library cannot parse a message lazily, and onnx's parse copies every weight. The file is
not mapped: a model file truncated while mapped (copied over in place as it loads) would raise
SIGBUS on the next page touched, ending the server. Anything the walk does not understand answers
True: the full look then decides, as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_WEIGHTS = frozenset({5, 15})  # GraphProto.initializer, GraphProto.sparse_initializer
_MARKS = (b"Div", b"Mod")
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5  # protobuf wire types (groups: refused)


class _NotWalkable(Exception):
    pass


def may_divide(path: Path) -> bool:
    """False only when the model at `path` has no Div or Mod node (see the module's docstring)."""
    return may_hold(path, _MARKS)


def may_hold(path: Path, marks: tuple[bytes, ...]) -> bool:
    """False only when no node of the model at `path` has an op_type holding one of `marks`
    (read the same way, outside the weights)."""
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            return size == 0 or _marked(file, size, marks)  # empty: not a model, the full look says so
    except (OSError, _NotWalkable):  # unreadable, or not protobuf (or it changed under the walk)
        return True


def _marked(file: BinaryIO, size: int, marks: tuple[bytes, ...]) -> bool:
    for number, start, end in _fields(file, 0, size):
        if number != _MODEL_GRAPH:
            if _holds_mark(file, start, end, marks):
                return True
            continue
        for inner, inner_start, inner_end in _fields(file, start, end):
            if inner not in _GRAPH_WEIGHTS and _holds_mark(file, inner_start, inner_end, marks):
                return True
    return False


def _holds_mark(file: BinaryIO, start: int, end: int, marks: tuple[bytes, ...]) -> bool:
    file.seek(start)
    field = file.read(end - start)
    if len(field) != end - start:  # the file shrank under the walk
        raise _NotWalkable
    return any(mark in field for mark in marks)


def _fields(file: BinaryIO, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The length-delimited fields of the message in bytes [pos, end) of `file`: (field number,
    start, end); scalar fields are stepped over. Seeks before each key: the caller reads between."""
    while pos < end:
        file.seek(pos)
        key, pos = _varint(file, pos, end)
        wire = key & 7
        if wire == _VARINT:
            _, pos = _varint(file, pos, end)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _LENGTH:
            size, pos = _varint(file, pos, end)
            if pos + size > end:
                raise _NotWalkable
            yield key >> 3, pos, pos + size
            pos += size
        else:
            raise _NotWalkable
    if pos != end:
        raise _NotWalkable


def _varint(file: BinaryIO, pos: int, end: int) -> tuple[int, int]:
    """The varint at `pos` (the file's position) and the position after it."""
    value = shift = 0
    while pos < end and shift < 64:
        byte = file.read(1)
        if not byte:
            raise _NotWalkable
        pos += 1
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value, pos
        shift += 7
    raise _NotWalkable
