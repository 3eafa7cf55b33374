"""Requests that do not parse: answered INVALID_ARGUMENT by the handler, never by grpc's own
deserializer error path (which answers UNKNOWN, logs a traceback per message and ends a stream).

The service is registered with tolerant deserializers: bytes that are not a valid message of the
method's request type become a `Malformed` value the handler answers as a client mistake, and
bytes over `max_message_bytes` an `Oversized` one, unparsed (frame_size.py), answered
RESOURCE_EXHAUSTED.

Methods that take one request are registered as client-streaming and read it themselves: grpc.aio's
unary path returns without any status when a call half-closes with no message (or a truncated
one), before a handler runs, so its caller waited for its own deadline (RELIABILITY.md, "A call
with no request message"). Read here, the missing message is answered INVALID_ARGUMENT.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from protos import grpc_service_pb2 as pb
from server.errors import for_caller
from server.protocol.field_counts import WALK_FROM_BYTES, crowded
from server.protocol.frame_size import Oversized, oversized
from server.protocol.message_fields import too_many_fields
from server.protocol.message_wait import MessageWaits, read_message
from server.protocol.rpc_slots import RpcSlots
from server.protocol.utf8_fields import BytesTwins


class Malformed(NamedTuple):
    """A request message that did not parse; `reason` is written for the caller; `head` holds a
    stream frame's model name, version and id when they could be read (utf8_fields)."""

    reason: str
    head: pb.ModelInferRequest | None = None


def tolerant_deserializer(
    message_type: type[protobuf_message.Message], max_bytes: int | None = None
) -> Callable[[bytes], Any]:
    name = message_type.DESCRIPTOR.full_name
    twins = BytesTwins()
    # An inference request's fields are counted before it is parsed (field_counts.py), any other's
    # by its schema (message_fields.py).
    counted = message_type is pb.ModelInferRequest

    def deserialize(data: bytes) -> protobuf_message.Message | Malformed | Oversized:
        if max_bytes is not None and len(data) > max_bytes:  # checked before it is parsed
            return oversized(data, max_bytes, message_type)
        if len(data) > WALK_FROM_BYTES:  # counted before it is parsed (a cost per field)
            too_many = crowded(data) if counted else too_many_fields(data, message_type.DESCRIPTOR)
            if too_many is not None:
                return Malformed(f"request is not parsed ({len(data)} bytes): {too_many}")
        try:
            return message_type.FromString(data)
        except protobuf_message.DecodeError as exc:
            said = f"request is not a valid {name} message ({len(data)} bytes)"
            fault = twins.fault(data, message_type)  # protobuf's own words name no field
            if fault is None:
                return Malformed(f"{said}: {exc}")
            return Malformed(f"{said}: {fault.reason}", fault.head)

    return deserialize


async def _refuse(request: Malformed | Oversized, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, Malformed):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, for_caller(request.reason))
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, request.reason)


def _refusing(
    kind: str, behavior: Callable[..., Any], waits: MessageWaits | None = None, slots: RpcSlots | None = None
) -> Callable[..., Any]:
    """`behavior` (a grpc aio method of `kind`), ending its call on a request that did not parse
    (INVALID_ARGUMENT) or was over the limit (RESOURCE_EXHAUSTED); for a bidirectional method, on
    any such message of its stream (the other messages go with it, as grpc's own checks had ended
    the call). A method of one request reads it itself (`_one_request`). Each call holds one of
    `slots` while it runs, or is refused unread (`_full`): in the one wrapper, no frame more."""
    if kind == "stream_unary":  # none is served: a client-streaming method would need its own
        raise ValueError("client-streaming methods are not supported by add_service")
    if kind == "stream_stream":

        async def checked(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, (Malformed, Oversized)):
                    await _refuse(request, context)
                yield request

        if inspect.iscoroutinefunction(behavior):  # it writes its answers (reflection's: side_streams.py)

            async def written(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
                if _full(slots):
                    await _refuse_full(slots, context)
                try:
                    await behavior(checked(requests, context), context)
                finally:
                    _release(slots)

            return written

        return _gated_stream(lambda requests, context: behavior(checked(requests, context), context), slots)

    if kind == "unary_stream" and inspect.isasyncgenfunction(behavior):  # none: health's Watch writes
        raise ValueError("a server-streaming method must write its answers (context.write), not yield them")

    # A method of one answer, or a server-streaming one that writes its answers (health's Watch).
    async def single(_: object, context: grpc.aio.ServicerContext) -> Any:
        if _full(slots):
            await _refuse_full(slots, context)
        try:
            return await behavior(await _one_request(context, waits), context)
        finally:
            _release(slots)

    return single


def _gated_stream(behavior: Callable[..., AsyncIterator[Any]], slots: RpcSlots | None) -> Callable[..., Any]:
    """A bidirectional method that yields its answers, holding one of `slots` while it runs."""

    async def streamed(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if _full(slots):
            await _refuse_full(slots, context)
        try:
            async for response in behavior(requests, context):
                yield response
        finally:
            _release(slots)

    return streamed


def _full(slots: RpcSlots | None) -> bool:
    """Take a slot for the call; True when none is free (a plain call: this runs once per call)."""
    return slots is not None and not slots.take()


async def _refuse_full(slots: RpcSlots | None, context: grpc.aio.ServicerContext) -> None:
    """End the call RESOURCE_EXHAUSTED, its message unread, as grpc's own bound did."""
    assert slots is not None
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, slots.refusal)


def _release(slots: RpcSlots | None) -> None:
    if slots is not None:
        slots.give()


async def _one_request(context: grpc.aio.ServicerContext, waits: MessageWaits | None = None) -> Any:
    """The call's request message (its method takes one), read from the client-streaming call it
    is registered as; the call ends INVALID_ARGUMENT when it half-closed with none, or the message
    did not parse, RESOURCE_EXHAUSTED when it was over the limit. A second message is not read: it
    would cost every call another read, and the first one is served, as grpc's unary path does.
    `waits` bounds how long, and how many a peer host's calls, wait for it (message_wait.py)."""
    request = await read_message(context, waits)
    if request is grpc.aio.EOF:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the call carried no request message (or only part of one); this method takes exactly one",
        )
    if isinstance(request, (Malformed, Oversized)):
        await _refuse(request, context)
    return request


def add_service(
    service: ServiceDescriptor,
    servicer: object,
    server: grpc.aio.Server,
    max_message_bytes: int | None = None,
    *,
    streams_answer_in_band: bool = True,
    waits: MessageWaits | None = None,
    slots: RpcSlots | None = None,
) -> None:
    """Register the service's methods as the generated `add_*_to_server` does, except that
    requests are parsed tolerantly, and not at all past `max_message_bytes`. A method refuses a
    Malformed or Oversized request by ending its call, except a bidirectional one of a service whose
    `streams_answer_in_band` (ours: ModelStreamInfer answers each in-band and goes on). Services
    that are not ours (health, reflection) are registered so too (`streams_answer_in_band=False`):
    grpc's own deserializer answered a malformed message UNKNOWN with a traceback logged per message
    (health takes no token: a log flood open to anyone, ~1.4 MiB/s from one client), and grpc's
    receive limit is only the ceiling above `max_message_bytes` (frame_size.received_ceiling).
    Every call of every method holds one of `slots` (the server's `max_concurrent_rpcs`) while its
    handler runs (rpc_slots.py)."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        kind = ("stream" if method.client_streaming else "unary") + "_"
        kind += "stream" if method.server_streaming else "unary"
        behavior = getattr(servicer, method.name)
        if kind == "stream_stream" and streams_answer_in_band:
            behavior = _gated_stream(behavior, slots)  # its own messages answered in-band
        else:
            behavior = _refusing(kind, behavior, waits, slots)
        registered = "stream_" + kind.split("_")[1]  # one request too: read by `_one_request`
        handlers[method.name] = getattr(grpc, f"{registered}_rpc_method_handler")(
            behavior,
            request_deserializer=tolerant_deserializer(GetMessageClass(method.input_type), max_message_bytes),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
