"""How many parameters and tensors an inference request's bytes hold, counted before protobuf parses
them, and refused past a bound.

Requests are parsed on the event loop (grpc.aio calls the deserializer there), and protobuf's cost
is per field, not per byte: a message of small fields parsed at 17-150 ns a byte, so one request
of 63 MiB of parameters (within the default `max_message_bytes`) held every other call 2.6 s;
100,000 requested outputs (500 KB) took 72 ms a frame. Tensor data (raw contents, packed numbers, one long
string) parses at memory speed. So a message over WALK_FROM_BYTES is walked here first, its top
level and each tensor's fields, and refused at the first count past its bound: the walk stops
there, and a request within the bounds costs a few steps per tensor.

The same holds inside an input's typed `contents` (one-byte strings parsed at ~45 ns each: 62 MiB of
them held the loop ~1 s) and inside a parameter's map entry (one key repeated 20 million times):
their fields are counted too, and a packed field of varints (9 ns an element) by its elements.
"""

from __future__ import annotations

from server.protocol.codec import MAX_BYTES_ELEMENTS, MAX_TYPED_ELEMENTS
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
_PARAMETERS = 4  # the request's own parameters
_TENSOR_PARAMETERS = {5: 4, 6: 2}  # the field of a tensor's parameters, by the tensor's field
# Every field counts toward these, unknown ones too (protobuf keeps those, at a cost per field):
# the bounded ones plus a few scalars (names, ids, a tensor's datatype, shape and contents).
_MAX_FIELDS = sum(bound for _, bound in _REQUEST_BOUNDS.values()) + 16
_MAX_TENSOR_FIELDS = MAX_PARAMETERS + 16
_INPUT_SHAPE = 3  # an input's packed shape: at most MAX_DIMS varints of at most 10 bytes
_MAX_SHAPE_BYTES = 10 * MAX_DIMS
# A tensor shorter than this can pass none of the bounds above (a field takes at least 2 bytes).
_WALK_TENSOR_FROM_BYTES = min(2 * MAX_PARAMETERS, _MAX_SHAPE_BYTES)
_CONTENTS = 5  # an input's typed contents (InferTensorContents)
# Fields in all the inputs' contents together: as many strings as the decode takes
# (codec.MAX_BYTES_ELEMENTS), one packed field of numbers a tensor, and a bound for the rest
# (unpacked values, unknown fields: every protobuf library packs numbers by default).
MAX_OTHER_CONTENTS_FIELDS = 65_536
_PACKED_CONTENTS = frozenset(range(1, 8))  # bool, int, int64, uint, uint64, fp32, fp64
_VARINT_CONTENTS = frozenset(range(1, 6))  # of which these are varints, parsed one by one
_STRINGS = 8  # bytes_contents
_STRING_KEY = _STRINGS << 3 | 2  # an element's key
_CONTINUED = bytes(range(0x80, 0x100))  # a varint's bytes but its last
# A parameter's map entry holds its key and its value (one of InferParameter's fields): a handful
# of fields at most, in the entry and in its value.
MAX_ENTRY_FIELDS = 8
_ENTRY_VALUE = 2


class _Budget:
    """What is left of the bounds a request's inputs count together."""

    __slots__ = ("other_fields", "packed", "strings", "varints")

    def __init__(self) -> None:
        self.strings = MAX_BYTES_ELEMENTS
        self.packed = MAX_TENSORS
        self.other_fields = MAX_OTHER_CONTENTS_FIELDS
        self.varints = MAX_TYPED_ELEMENTS


class Truncated(Exception):
    """The bytes end inside a field: left to protobuf, whose error names it."""


class GroupFound(Exception):
    """A group (wire types 3 and 4): proto3 has none and no client of this protocol sends one, but
    protobuf parses an unknown one and the rest after it, so it cannot be stepped over unwalked."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = read_varint(data, pos)
    if value is None:
        raise Truncated
    return value, pos


def next_field(data: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """(field, wire type, the value's start, the next field's start) of the field at `pos`."""
    key = data[pos]  # one byte for every field below 16, two below 2048: no call
    if key < 0x80:
        pos += 1
    elif pos + 1 < end and data[pos + 1] < 0x80:
        key = key & 0x7F | data[pos + 1] << 7
        pos += 2
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
        after = pos + 1 if pos < end and data[pos] < 0x80 else _varint(data, pos)[1]
    elif wire_type == 1:
        after = pos + 8
    elif wire_type == 5:
        after = pos + 4
    elif wire_type in (3, 4):
        raise GroupFound
    else:  # 6, 7: no such wire type; protobuf refuses the message
        raise Truncated
    if after > end:
        raise Truncated
    return field, wire_type, pos, after


def crowded(data: bytes) -> str | None:
    """Why a ModelInferRequest's bytes hold too many parameters or tensors to be parsed (the first
    bound passed, for the caller's INVALID_ARGUMENT), else None; None too for bytes that end inside
    a field, which protobuf refuses in its own words."""
    if len(data) <= WALK_FROM_BYTES:
        return None
    counts = dict.fromkeys(_REQUEST_BOUNDS, 0)
    pos, end, fields = 0, len(data), 0
    budget = _Budget()
    try:
        while pos < end:
            fields += 1
            if fields > _MAX_FIELDS:
                return f"the request has more than {_MAX_FIELDS} fields (the server's bound)"
            field, wire_type, value_at, pos = next_field(data, pos, end)
            if wire_type != 2 or field not in counts:
                continue
            counts[field] += 1
            name, bound = _REQUEST_BOUNDS[field]
            if counts[field] > bound:
                return f"the request has more than {bound} {name} (the server's bound)"
            if field == _PARAMETERS and pos - value_at > 2 * MAX_ENTRY_FIELDS:
                fault = _entry_fault(data, value_at, pos)
                if fault is not None:
                    return f"request parameter {counts[field] - 1} has {fault} (the server's bound)"
            elif field in _TENSOR_PARAMETERS and pos - value_at > _WALK_TENSOR_FROM_BYTES:
                fault = _tensor_fault(data, value_at, pos, field, budget)
                if fault is not None:
                    kind = "input" if field == 5 else "requested output"
                    return f"{kind} {counts[field] - 1} of the request has {fault} (the server's bound)"
    except Truncated:
        return None
    except GroupFound:
        return "the request holds a protobuf group, which this protocol has none of"
    return None


def _tensor_fault(data: bytes, pos: int, end: int, tensor_field: int, budget: _Budget) -> str | None:
    """What of the tensor in data[pos:end] passes a bound: more than MAX_PARAMETERS entries in its
    parameters or a parameter of too many fields, more than _MAX_TENSOR_FIELDS fields, or (an
    input) a packed shape longer than MAX_DIMS dims can be (one field, which protobuf and the
    shape's copy took seconds over at 65 million dims) or contents past the request's `budget`;
    else None. A tensor too short to pass any (a field takes at least 2 bytes) is not walked at all
    (the caller's length test)."""
    parameters = _TENSOR_PARAMETERS[tensor_field]
    shape = _INPUT_SHAPE if tensor_field == 5 else None
    contents = _CONTENTS if tensor_field == 5 else None
    count = fields = 0
    while pos < end:
        fields += 1
        if fields > _MAX_TENSOR_FIELDS:
            return f"more than {_MAX_TENSOR_FIELDS} fields"
        number, wire_type, value_at, pos = next_field(data, pos, end)
        if wire_type != 2:
            continue
        if number == parameters:
            count += 1
            if count > MAX_PARAMETERS:
                return f"more than {MAX_PARAMETERS} parameters"
            if pos - value_at > 2 * MAX_ENTRY_FIELDS and (fault := _entry_fault(data, value_at, pos)):
                return f"{fault} (its parameter {count - 1})"
        elif number == shape and pos - value_at > _MAX_SHAPE_BYTES:
            return f"a shape of more than {MAX_DIMS} dims"
        elif number == contents and (fault := _contents_fault(data, value_at, pos, budget)):
            return fault
    return None


def _entry_fault(data: bytes, pos: int, end: int, value: bool = False) -> str | None:
    """A parameter's map entry in data[pos:end] (or, `value`, its InferParameter) with more than
    MAX_ENTRY_FIELDS fields, else None: protobuf parses a key repeated millions of times."""
    fields = 0
    while pos < end:
        fields += 1
        if fields > MAX_ENTRY_FIELDS:
            return f"a parameter of more than {MAX_ENTRY_FIELDS} fields"
        number, wire_type, value_at, pos = next_field(data, pos, end)
        long = pos - value_at > 2 * MAX_ENTRY_FIELDS
        if not value and number == _ENTRY_VALUE and wire_type == 2 and long:
            fault = _entry_fault(data, value_at, pos, value=True)
            if fault is not None:
                return fault
    return None


def _contents_fault(data: bytes, pos: int, end: int, budget: _Budget) -> str | None:
    """Why the contents in data[pos:end] take the request past its `budget` (spent here) of
    strings, other fields or packed numbers, else None. A Python step costs ~10x protobuf's, so a
    run of strings under 16 KiB (many small ones is the case bounded) is stepped over in a loop
    of its own."""
    strings, others = budget.strings, budget.other_fields
    last = end - 2  # a string's key and a length of up to two bytes lie before `end`
    while pos < end:
        while strings >= 0 and pos < last and data[pos] == _STRING_KEY:
            if (size := data[pos + 1]) < 0x80:
                pos += 2 + size
            elif (high := data[pos + 2]) < 0x80:
                pos += 3 + (size & 0x7F | high << 7)
            else:
                break
            strings -= 1
        if strings < 0 or pos >= end:
            break
        number, wire_type, value_at, after = next_field(data, pos, end)
        if number == _STRINGS and wire_type == 2:
            strings -= 1
        elif wire_type == 2 and number in _PACKED_CONTENTS:
            fault = _packed_fault(data, value_at, after, number, budget)
            if fault is not None:
                return fault
        else:
            others -= 1
            if others < 0:
                return (
                    f"typed contents that take the request past {MAX_OTHER_CONTENTS_FIELDS} fields "
                    "other than strings and packed numbers (unpacked values, unknown fields)"
                )
        pos = after
    if strings < 0:
        return f"typed contents that take the request past {MAX_BYTES_ELEMENTS} strings"
    if pos > end:
        raise Truncated
    budget.strings, budget.other_fields = strings, others
    return None


def _packed_fault(data: bytes, pos: int, end: int, field: int, budget: _Budget) -> str | None:
    """Why a packed numbers field in data[pos:end] takes the request past its packed fields or (a
    field of varints, parsed one by one) its varints, else None."""
    budget.packed -= 1
    if budget.packed < 0:
        return f"typed contents that take the request past {MAX_TENSORS} packed fields"
    if field not in _VARINT_CONTENTS:
        return None  # fixed-size numbers: parsed at memory speed, and counted by the decode
    # At least one element each 10 bytes (past the budget: not counted); exactly, one each byte
    # without the continuation bit (a copy, at memory speed).
    least = (end - pos + 9) // 10
    values = least if least > budget.varints else len(data[pos:end].translate(None, _CONTINUED))
    if values > budget.varints:
        return f"packed contents that take the request past {MAX_TYPED_ELEMENTS} values"
    budget.varints -= values
    return None
