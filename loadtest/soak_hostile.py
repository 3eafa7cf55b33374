"""The soak's hostile requests: each kind a request the server must refuse with a client-error
status (INVALID_ARGUMENT or NOT_FOUND), never INTERNAL or UNKNOWN, while it serves the others.

A kind is a name, the status it must get and an async function that sends one such request and
returns the status it got (None: answered OK, itself a failure for these) with its message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from loadtest.soak_report import NO_ANSWER, Rule
from loadtest.soak_traffic import CALL_TIMEOUT_S, Books, mlp_request, settle, status_of
from protos import grpc_service_pb2 as pb
from protos.wire import pack_bytes

GARBAGE = b"\xff\xff\xff\xff\x0f"  # a field with tag 0x1fffffff and a truncated varint
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
HOSTILE = "hostile/"  # the prefix of the hostile classes' names in the books

Answer = tuple[str | None, str]  # (status, None for OK; the error's message)
Send = Callable[[grpc.aio.Channel, Any, int], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    expect: str
    send: Send


def _mlp(rid: str) -> pb.ModelInferRequest:
    return mlp_request("mlp", 1, rid)


async def _infer(stub: Any, request: pb.ModelInferRequest) -> Answer:
    started = time.monotonic()
    try:
        await stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as err:
        details = err.details() or ""
        return status_of(err.code(), details, time.monotonic() - started, CALL_TIMEOUT_S), details
    return None, ""


def _with_input(datatype: str, shape: list[int], data: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="features", datatype=datatype, shape=shape)
    request.raw_input_contents.append(data)
    return request


async def unparseable(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    raw = channel.unary_unary(INFER, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    started = time.monotonic()
    try:
        await raw(GARBAGE, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as err:
        details = err.details() or ""
        return status_of(err.code(), details, time.monotonic() - started, CALL_TIMEOUT_S), details
    return None, ""


async def unparseable_in_stream(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    """Garbage as one frame of a stream: that frame is refused and the stream ends cleanly."""
    raw = channel.stream_stream(
        STREAM, request_serializer=lambda b: b, response_deserializer=pb.ModelStreamInferResponse.FromString
    )

    async def frames() -> AsyncIterator[bytes]:
        yield GARBAGE

    try:
        answers = [answer async for answer in raw(frames(), timeout=CALL_TIMEOUT_S)]
    except grpc.aio.AioRpcError as err:
        return f"STREAM {err.code().name}", err.details() or ""
    if len(answers) != 1:
        return (NO_ANSWER, "") if not answers else ("ANSWERED_TWICE", str(answers))
    status, sep, message = answers[0].error_message.partition(": ")
    return (status, message) if sep else (None, "")


async def huge_shape(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    return await _infer(stub, _with_input("FP32", [2**40, 64], bytes(256)))


async def negative_dim(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    return await _infer(stub, _with_input("FP32", [-1, 64], bytes(256)))


async def wrong_datatype(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    return await _infer(stub, _with_input("FP64", [1, 64], bytes(8 * 64)))


async def raw_size_mismatch(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    return await _infer(stub, _with_input("FP32", [1, 64], bytes(100)))


async def contents_count_mismatch(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend([0.5, 0.5, 0.5])
    return await _infer(stub, request)


async def bytes_count_mismatch(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    two = pack_bytes(np.array([b"ab", b"cd"], dtype=object))
    return await _infer(stub, _with_input("BYTES", [1, 3], two))  # 3 elements declared, 2 sent


async def too_many_rows(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    return await _infer(stub, mlp_request("mlp", 129, f"rows-{n}"))  # mlp's max_batch_size is 128


async def unknown_model(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    return await _infer(stub, mlp_request("no_such_model", 1, f"unknown-{n}"))


async def unknown_version(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    request = _mlp(f"version-{n}")
    request.model_version = "7"
    return await _infer(stub, request)


async def bad_version(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    request = _mlp(f"bad-version-{n}")
    request.model_version = (" 1", "01", "+1", "1.0")[n % 4]
    return await _infer(stub, request)


async def long_name_load(channel: grpc.aio.Channel, stub: Any, n: int) -> Answer:
    started = time.monotonic()
    try:
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="m" * 5000), timeout=60)
    except grpc.aio.AioRpcError as err:
        details = err.details() or ""
        return status_of(err.code(), details, time.monotonic() - started, 60), details
    return None, ""


KINDS = (
    Kind("unparseable", "INVALID_ARGUMENT", unparseable),
    Kind("unparseable_in_stream", "INVALID_ARGUMENT", unparseable_in_stream),
    Kind("huge_shape", "INVALID_ARGUMENT", huge_shape),
    Kind("negative_dim", "INVALID_ARGUMENT", negative_dim),
    Kind("wrong_datatype", "INVALID_ARGUMENT", wrong_datatype),
    Kind("raw_size_mismatch", "INVALID_ARGUMENT", raw_size_mismatch),
    Kind("contents_count_mismatch", "INVALID_ARGUMENT", contents_count_mismatch),
    Kind("bytes_count_mismatch", "INVALID_ARGUMENT", bytes_count_mismatch),
    Kind("too_many_rows", "INVALID_ARGUMENT", too_many_rows),
    Kind("unknown_model", "NOT_FOUND", unknown_model),
    Kind("unknown_version", "NOT_FOUND", unknown_version),
    Kind("bad_version", "INVALID_ARGUMENT", bad_version),
    Kind("long_name_load", "INVALID_ARGUMENT", long_name_load),
)


def rules() -> dict[str, Rule]:
    return {HOSTILE + kind.name: Rule(expect=kind.expect) for kind in KINDS}


async def hostile_loop(
    channel: grpc.aio.Channel, stub: Any, books: Books, pause_s: float, end: float
) -> None:
    """Every kind in turn until `end`, `pause_s` apart; each settled in its own class. Every kind
    is sent at least once, however busy the machine (a whole round past `end` if need be)."""
    loop = asyncio.get_running_loop()
    n = 0
    while loop.time() < end or n < len(KINDS):
        kind = KINDS[n % len(KINDS)]
        tally = books.of(HOSTILE + kind.name)
        tally.sent += 1
        settle(tally, *await kind.send(channel, stub, n // len(KINDS)))
        n += 1
        await asyncio.sleep(pause_s)  # pacing: hostile requests are a trickle beside the load
