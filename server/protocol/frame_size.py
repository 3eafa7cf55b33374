"""Request messages over `max_message_bytes`: refused one by one, never by ending a stream.

grpc core ends the whole call for a message over its receive limit, so a stream lost every frame
and every answer not yet written for one oversized frame. grpc's receive limit is therefore a hard
ceiling above `max_message_bytes` (`received_ceiling`: what grpc may hold for one message stays
bounded), and the request deserializer checks each message's length against `max_message_bytes`
before parsing it: one over it becomes an `Oversized` value, answered RESOURCE_EXHAUSTED by the
handler (a stream's error frame for that frame alone). Only a message over the ceiling still ends
its call, with grpc's own "Received message larger than max".
"""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf import message as protobuf_message

from protos import grpc_service_pb2 as pb

# grpc core takes a channel argument as a C int.
GRPC_INT_MAX = 2**31 - 1
# An oversized frame's model name, version and id are read from at most this many
# bytes at its start, to answer it with its id (clients match answers by id); beyond it (or bytes
# that do not parse) it is answered without them.
HEAD_MAX_BYTES = 16 * 1024
# ... and from at most this many fields, walked here in Python: 8,192 empty fields fit in 16 KiB,
# and walking them took ~14 ms of the event loop per frame (a tester's crafted head: another
# client's p50 went from 2 to 51 ms). A head is 3 fields.
HEAD_MAX_FIELDS = 64
# ModelInferRequest's fields up to `id` (model_name 1, model_version 2, id 3), all
# length-delimited; serializers write fields in number order, so they come first (the parameters,
# 4, and the tensors after them are not read: an error frame names only these three).
_LAST_HEAD_FIELD = 3
_LENGTH_DELIMITED = 2


def received_ceiling(max_message_bytes: int) -> int:
    """grpc's receive limit: twice `max_message_bytes` (at most a C int), so a frame up to that
    size is refused alone; one beyond it still ends its call."""
    return min(2 * max_message_bytes, GRPC_INT_MAX)


class Oversized(NamedTuple):
    """A request message over `limit` bytes, not parsed; `head` holds a stream frame's model name,
    version and id when they could be read (None otherwise); `tensors`: an inference
    request (the only messages whose size is their tensors')."""

    size: int
    limit: int
    head: pb.ModelInferRequest | None = None
    tensors: bool = False

    @property
    def reason(self) -> str:
        said = (
            f"request message larger than max ({self.size} vs. {self.limit} bytes, the server's "
            "max_message_bytes)"
        )
        return said + ": send fewer rows, or use shared memory for inputs" if self.tensors else said


def oversized(data: bytes, limit: int, message_type: type[protobuf_message.Message]) -> Oversized:
    """The marker for `data`, over `limit`; its head is read only for ModelInferRequest (the
    stream's frames)."""
    if message_type is not pb.ModelInferRequest:
        return Oversized(len(data), limit)
    return Oversized(len(data), limit, request_head(data), tensors=True)


def request_head(data: bytes) -> pb.ModelInferRequest | None:
    """A ModelInferRequest of `data`'s first fields up to `id` (parameters and tensors left out),
    parsed from at most HEAD_MAX_BYTES and HEAD_MAX_FIELDS fields; None when they are longer or do
    not parse."""
    end = 0
    for _ in range(HEAD_MAX_FIELDS + 1):
        if end >= len(data):
            break
        tag, at = read_varint(data, end)
        if tag is None or tag >> 3 > _LAST_HEAD_FIELD:
            break  # the parameters or tensors begin (or bytes that are no field: parse what came before)
        if tag & 7 != _LENGTH_DELIMITED:
            return None
        length, at = read_varint(data, at)
        if length is None:
            return None
        end = at + length
        if end > HEAD_MAX_BYTES:
            return None
    else:  # a head of more than HEAD_MAX_FIELDS fields is answered without it
        return None
    head = pb.ModelInferRequest()
    try:
        head.ParseFromString(data[:end])
    except protobuf_message.DecodeError:
        return None
    return head


def read_varint(data: bytes, at: int) -> tuple[int | None, int]:
    """The varint at `at` and the position after it; None when it does not end within 10 bytes."""
    value = 0
    for shift in range(0, 70, 7):
        if at >= len(data):
            return None, at
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    return None, at
