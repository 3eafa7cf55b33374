"""How many parameters and tensors an inference request's bytes hold, counted before protobuf parses
them, and refused past a bound.

Requests are parsed on the event loop (grpc.aio calls the deserializer there), and protobuf's cost
is per field, not per byte: a message of small fields parsed at 17-150 ns a byte, so one request
of 63 MiB of parameters (within the default `max_message_bytes`) held every other call 2.6 s;
100,000 requested outputs (500 KB) took 72 ms a frame. Tensor data (raw contents, packed numbers, one long
string) parses at memory speed. So a message over WALK_FROM_BYTES is walked here first, its top
level and each tensor's fields, and refused at the first count past its bound: the walk stops
there, and a request within the bounds costs a few steps per tensor.
"""

from __future__ import annotations

from server.protocol.frame_size import read_varint
from server.tensor_bounds import MAX_DIMS

# Below this, any message parses within a few milliseconds: not walked.
WALK_FROM_BYTES = 16 * 1024
# Bounds no real request comes near (a Triton client sends a handful of parameters; a model with
# thousands of inputs or outputs is unheard of), far below what stalls the loop.
MAX_PARAMETERS = 256  # in the request's own map, and in each tensor's
MAX_TENSORS = 1024  # inputs, requested outputs, raw_input_contents: each

# ModelInferRequest's fields (protos/grpc_service.proto): parameters 4, inputs 5, outputs 6,
# raw_input_contents 7; an input's parameters are its field 4, a requested output's its field 2.
_REQUEST_BOUNDS = {4: ("parameters", MAX_PARAMETERS), 5: ("inputs", MAX_TENSORS), 6: ("outputs", MAX_TENSORS),
                   7: ("raw_input_contents", MAX_TENSORS)}  # fmt: skip
_TENSOR_PARAMETERS = {5: 4, 6: 2}  # the field of a tensor's parameters, by the tensor's field
# Every field counts toward these, unknown ones too (protobuf keeps those, at a cost per field):
# the bounded ones plus a few scalars (names, ids, a tensor's datatype, shape and contents).
_MAX_FIELDS = sum(bound for _, bound in _REQUEST_BOUNDS.values()) + 16
_MAX_TENSOR_FIELDS = MAX_PARAMETERS + 16
_INPUT_SHAPE = 3  # an input's packed shape: at most MAX_DIMS varints of at most 10 bytes
_MAX_SHAPE_BYTES = 10 * MAX_DIMS
# A tensor shorter than this can pass none of the bounds above (a field takes at least 2 bytes).
_WALK_TENSOR_FROM_BYTES = min(2 * MAX_PARAMETERS, _MAX_SHAPE_BYTES)


class _Truncated(Exception):
    """The bytes end inside a field: left to protobuf, whose error names it."""


class _Group(Exception):
    """A group (wire types 3 and 4): proto3 has none and no client of this protocol sends one, but
    protobuf parses an unknown one and the rest after it, so it cannot be stepped over unwalked."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = read_varint(data, pos)
    if value is None:
        raise _Truncated
    return value, pos


def _next_field(data: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """(field, wire type, the value's start, the next field's start) of the field at `pos`."""
    key = data[pos]  # one byte for every field below 16: no call (the walk's common step)
    if key < 0x80:
        pos += 1
    else:
        key, pos = _varint(data, pos)
    field, wire_type = key >> 3, key & 7
    if wire_type == 2:
        length = data[pos] if pos < end else 0x80
        if length < 0x80:
            pos += 1
        else:
            length, pos = _varint(data, pos)
        after = pos + length
    elif wire_type == 0:
        _, after = _varint(data, pos)
    elif wire_type == 1:
        after = pos + 8
    elif wire_type == 5:
        after = pos + 4
    elif wire_type in (3, 4):
        raise _Group
    else:  # 6, 7: no such wire type; protobuf refuses the message
        raise _Truncated
    if after > end:
        raise _Truncated
    return field, wire_type, pos, after


def crowded(data: bytes) -> str | None:
    """Why a ModelInferRequest's bytes hold too many parameters or tensors to be parsed (the first
    bound passed, for the caller's INVALID_ARGUMENT), else None; None too for bytes that end inside
    a field, which protobuf refuses in its own words."""
    if len(data) <= WALK_FROM_BYTES:
        return None
    counts = dict.fromkeys(_REQUEST_BOUNDS, 0)
    pos, end, fields = 0, len(data), 0
    try:
        while pos < end:
            fields += 1
            if fields > _MAX_FIELDS:
                return f"the request has more than {_MAX_FIELDS} fields (the server's bound)"
            field, wire_type, value_at, pos = _next_field(data, pos, end)
            if wire_type != 2 or field not in counts:
                continue
            counts[field] += 1
            name, bound = _REQUEST_BOUNDS[field]
            if counts[field] > bound:
                return f"the request has more than {bound} {name} (the server's bound)"
            if field in _TENSOR_PARAMETERS and pos - value_at > _WALK_TENSOR_FROM_BYTES:
                fault = _tensor_fault(data, value_at, pos, field)
                if fault is not None:
                    kind = "input" if field == 5 else "requested output"
                    return f"{kind} {counts[field] - 1} of the request has {fault} (the server's bound)"
    except _Truncated:
        return None
    except _Group:
        return "the request holds a protobuf group, which this protocol has none of"
    return None


def _tensor_fault(data: bytes, pos: int, end: int, tensor_field: int) -> str | None:
    """What of the tensor in data[pos:end] passes a bound: more than MAX_PARAMETERS entries in its
    parameters, more than _MAX_TENSOR_FIELDS fields, or (an input) a packed shape longer than
    MAX_DIMS dims can be (one field, which protobuf and the shape's copy took seconds over at 65
    million dims); else None. A tensor too short to pass any (a field takes at least 2 bytes) is
    not walked at all (the caller's length test)."""
    parameters = _TENSOR_PARAMETERS[tensor_field]
    shape = _INPUT_SHAPE if tensor_field == 5 else None
    count = fields = 0
    while pos < end:
        fields += 1
        if fields > _MAX_TENSOR_FIELDS:
            return f"more than {_MAX_TENSOR_FIELDS} fields"
        number, wire_type, value_at, pos = _next_field(data, pos, end)
        if wire_type != 2:
            continue
        if number == parameters:
            count += 1
            if count > MAX_PARAMETERS:
                return f"more than {MAX_PARAMETERS} parameters"
        elif number == shape and pos - value_at > _MAX_SHAPE_BYTES:
            return f"a shape of more than {MAX_DIMS} dims"
    return None
