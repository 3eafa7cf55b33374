"""How many fields any request message other than an inference request holds, counted on the wire
before protobuf parses it, and refused past a bound (field_counts.py counts inference requests).

Every method's request is parsed on the event loop at a cost per field, and each may be as large as
`max_message_bytes`: a RepositoryModelLoad of 4 million parameter entries held every other call
4.9 s, a ServerLive or ModelMetadata request full of unknown fields 0.5-1 s. No such request needs
many fields (a load's `config` and up to 64 `file:` parameters are ~200), so a message over
WALK_FROM_BYTES is walked by its own schema, nested messages and map entries too, and refused at
the first field past MAX_FIELDS: a walk of at most that many steps. A long string or bytes field
(a model file) is one field.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor

from server.protocol.field_counts import GroupFound, Truncated, next_field

MAX_FIELDS = 4096  # in the whole message: nested ones and fields protobuf does not know too


def too_many_fields(data: bytes, descriptor: Descriptor) -> str | None:
    """Why the `descriptor` message in `data` is not to be parsed (its fields past MAX_FIELDS, or a
    protobuf group), else None; None too for bytes that end inside a field (protobuf's to say)."""
    left = [MAX_FIELDS]
    try:
        if _past(data, 0, len(data), descriptor, left):
            bound = f"the server's bound for a {descriptor.name}"
            return f"the request has more than {MAX_FIELDS} fields ({bound})"
    except Truncated:
        return None
    except GroupFound:
        return "the request holds a protobuf group, which this protocol has none of"
    return None


def _past(data: bytes, pos: int, end: int, descriptor: Descriptor, left: list[int]) -> bool:
    """Whether the fields in data[pos:end], a `descriptor` message, and those nested in them take
    `left` (spent here) below zero."""
    while pos < end:
        left[0] -= 1
        if left[0] < 0:
            return True
        number, wire_type, value_at, pos = next_field(data, pos, end)
        if wire_type != 2:
            continue
        field = descriptor.fields_by_number.get(number)
        nested = None if field is None else field.message_type  # a map's entry is a message too
        if nested is not None and _past(data, value_at, pos, nested, left):
            return True
    return False
