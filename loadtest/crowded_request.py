"""How long one request crowded with parameters holds a server's other calls
(server/protocol/field_counts.py).

    .venv/bin/python -m loadtest.crowded_request --target 127.0.0.1:8001 [--mib 18] [--kind KIND]
    .venv/bin/python -m loadtest.crowded_request --target 127.0.0.1:8001 --frames [--count 10]
    .venv/bin/python -m loadtest.crowded_request --walk

Sends one ModelInfer for `mlp` whose request parameters fill `--mib` MiB (distinct keys, 16 bytes
an entry) while a second channel sends ServerLive every 10 ms, and prints the crowded call's time
and status and the slowest ServerLive meanwhile. Bounded: one crowded call, a probe that stops with
it. A server whose `max_message_bytes` is below the request refuses it RESOURCE_EXHAUSTED unparsed.
`--kind` fills the request with another per-element cost instead: one input's `bytes_contents` of
one-byte strings, its `int_contents` packed as one-byte varints or unpacked, unknown fields inside
its contents, or one request parameter whose map entry repeats its key; or another method's request:
a RepositoryModelLoad of parameter entries, a ServerLive of unknown fields.
`--frames`: the time a frame of each crowded kind (100,000 requested outputs, inputs, parameters of
the request, of an input, of an output, raw contents) takes on one stream, `--count` frames each.
`--walk`: in this process, no server: the walk's time (server/protocol/field_counts.py) and
protobuf's parse time for strings at the walk's bound, one-byte and 200-byte, and each `--kind`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import NamedTuple

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

ENTRY_BYTES = 16  # "k0000000" and an int64 parameter, with their tags and lengths


class Stall(NamedTuple):
    request_bytes: int
    call_s: float
    status: str  # "OK" or "CODE: details"
    slowest_live_s: float


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def _field(number: int, body: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(body)) + body


# Each kind's repeated unit, filling an input's contents (InferTensorContents' fields: int_contents
# 2, bytes_contents 8) or, for "entry-keys", one parameter's map entry (its key is field 1).
KINDS = {
    "bytes": bytes([8 << 3 | 2, 1, 65]),  # a one-byte string
    "varints": b"\x01",  # inside one packed int_contents field
    "unpacked": bytes([2 << 3 | 0, 1]),  # an int_contents value with its own tag
    "unknown": bytes([0xA0, 0x01, 1]),  # field 20, unknown to protobuf
    "entry-keys": bytes([1 << 3 | 2, 1, 65]),  # the entry's key, again
    # Other methods' requests (message_fields.py): a RepositoryModelLoad of parameter entries (its
    # field 3, each "k" -> bool_param true), a ServerLive of unknown fields.
    "load-entries": _field(3, _field(1, b"k") + _field(2, b"\x08\x01")),
    "live-unknown": bytes([15 << 3 | 0, 1]),
}
# The method each kind is sent to: ModelInfer but for these.
METHODS = {"load-entries": "RepositoryModelLoad", "live-unknown": "ServerLive"}


def crowded(mib: float, kind: str = "parameters") -> bytes:
    if kind == "parameters":
        request = pb.ModelInferRequest(model_name="mlp", id="crowded")
        for i in range(int(mib * 2**20 / ENTRY_BYTES)):
            request.parameters[f"k{i:07d}"].int64_param = 1
        data: bytes = request.SerializeToString()
        return data
    unit = KINDS[kind]
    body = unit * int(mib * 2**20 / len(unit))
    head: bytes = pb.ModelInferRequest(model_name="mlp", id="crowded").SerializeToString()
    if kind in METHODS:
        return body
    if kind == "entry-keys":
        return head + _field(4, body + _field(2, b"\x10\x01"))  # the entry's value: int64_param 1
    contents = _field(2, body) if kind == "varints" else body
    datatype = "BYTES" if kind == "bytes" else "INT32"
    tensor = _field(1, b"features") + _field(2, datatype.encode()) + _field(3, b"\x01") + _field(5, contents)
    return head + _field(5, tensor)


async def measure(target: str, mib: float, kind: str = "parameters") -> Stall:
    data = crowded(mib, kind)
    options = [("grpc.max_send_message_length", -1)]
    async with (
        grpc.aio.insecure_channel(target, options=options) as sender,
        grpc.aio.insecure_channel(target) as prober,
    ):
        live = pb_grpc.GRPCInferenceServiceStub(prober).ServerLive  # type: ignore[no-untyped-call]
        await live(pb.ServerLiveRequest(), timeout=30)
        done = asyncio.Event()
        slowest = 0.0

        async def probe() -> None:
            nonlocal slowest
            while not done.is_set():
                start = time.perf_counter()
                await live(pb.ServerLiveRequest(), timeout=60)
                slowest = max(slowest, time.perf_counter() - start)
                await asyncio.sleep(0.01)

        probing = asyncio.create_task(probe())
        start = time.perf_counter()
        try:
            method = METHODS.get(kind, "ModelInfer")
            await sender.unary_unary(f"/inference.GRPCInferenceService/{method}")(data, timeout=120)
            status = "OK"
        except grpc.aio.AioRpcError as exc:
            status = f"{exc.code().name}: {exc.details()}"
        call_s = time.perf_counter() - start
        done.set()
        await probing
    return Stall(len(data), call_s, status, slowest)


def _mlp(rid: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp", id=rid)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(bytes(4 * 64))
    return request


def crowded_frames(many: int = 100_000) -> dict[str, bytes]:
    """One frame of each crowded kind, `many` fields of it."""
    kinds: dict[str, pb.ModelInferRequest] = {}
    kinds["requested outputs"] = pb.ModelInferRequest(model_name="mlp", id="o")
    kinds["requested outputs"].outputs.extend(
        pb.ModelInferRequest.InferRequestedOutputTensor(name="o") for _ in range(many)
    )
    kinds["inputs"] = pb.ModelInferRequest(model_name="mlp", id="i")
    for _ in range(many):
        kinds["inputs"].inputs.add(name="features", datatype="FP32", shape=[1, 64])
    kinds["request parameters"], kinds["an input's parameters"] = _mlp("p"), _mlp("q")
    kinds["an output's parameters"], kinds["raw_input_contents"] = _mlp("s"), _mlp("r")
    output = kinds["an output's parameters"].outputs.add(name="scores")
    for i in range(many):
        kinds["request parameters"].parameters[f"k{i}"].int64_param = 1
        kinds["an input's parameters"].inputs[0].parameters[f"k{i}"].int64_param = 1
        output.parameters[f"k{i}"].int64_param = 1
    kinds["raw_input_contents"].raw_input_contents.extend(b"" for _ in range(many))
    return {name: request.SerializeToString() for name, request in kinds.items()}


async def frame_times(target: str, count: int, many: int = 100_000) -> dict[str, tuple[int, float, str]]:
    """Per kind: (frame bytes, seconds a frame, the last answer's error or "")."""
    times: dict[str, tuple[int, float, str]] = {}
    options = [("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        for name, data in crowded_frames(many).items():
            call = channel.stream_stream(
                "/inference.GRPCInferenceService/ModelStreamInfer",
                request_serializer=bytes,
                response_deserializer=pb.ModelStreamInferResponse.FromString,
            )()
            start = time.perf_counter()
            said = ""
            for _ in range(count):
                await call.write(data)
                said = (await call.read()).error_message
            times[name] = (len(data), (time.perf_counter() - start) / count, said)
            await call.done_writing()
    return times


def walk_times(mib: float) -> dict[str, tuple[float, float | None, str]]:
    """Per case: (the walk's seconds, protobuf's parse seconds when the walk let it pass, the walk's
    answer)."""
    from server.protocol.codec import MAX_BYTES_ELEMENTS
    from server.protocol.field_counts import crowded as walk
    from server.protocol.message_fields import too_many_fields

    cases = {f"{kind} ({mib:g} MiB)": (kind, crowded(mib, kind)) for kind in ["parameters", *KINDS]}
    for size in (1, 200):
        request = pb.ModelInferRequest(model_name="mlp")
        strings = request.inputs.add(name="s", datatype="BYTES", shape=[MAX_BYTES_ELEMENTS])
        strings.contents.bytes_contents.extend([b"s" * size] * MAX_BYTES_ELEMENTS)
        cases[f"{MAX_BYTES_ELEMENTS} strings of {size} bytes"] = ("strings", request.SerializeToString())
    times: dict[str, tuple[float, float | None, str]] = {}
    for name, (kind, data) in cases.items():
        message_type = getattr(pb, f"{METHODS.get(kind, 'ModelInfer')}Request")
        start = time.perf_counter()
        said = walk(data) if kind not in METHODS else too_many_fields(data, message_type.DESCRIPTOR)
        walked = time.perf_counter() - start
        parse = None
        if said is None:
            start = time.perf_counter()
            message_type.FromString(data)
            parse = time.perf_counter() - start
        times[name] = (walked, parse, said or "passes")
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:8001")
    parser.add_argument("--mib", type=float, default=18.0, help="MiB of request parameters")
    parser.add_argument("--kind", choices=["parameters", *KINDS], default="parameters")
    parser.add_argument("--walk", action="store_true", help="the walk's own time, in this process")
    parser.add_argument("--frames", action="store_true", help="crowded frames on a stream instead")
    parser.add_argument("--count", type=int, default=10, help="--frames: frames of each kind")
    args = parser.parse_args(argv)
    if args.walk:
        for name, (walked, parse, said) in walk_times(args.mib).items():
            parsed = "" if parse is None else f", then parsed {parse * 1e3:.1f} ms"
            print(f"{name:<28} walk {walked * 1e3:6.1f} ms{parsed}: {said[:80]}")
        return 0
    if args.frames:
        for name, (size, seconds, said) in asyncio.run(frame_times(args.target, args.count)).items():
            print(f"100,000 {name:<24} {size / 1e3:7.0f} KB {seconds * 1e3:7.1f} ms a frame  {said[:90]}")
        return 0
    stall = asyncio.run(measure(args.target, args.mib, args.kind))
    print(
        f"request {stall.request_bytes / 2**20:.1f} MiB: the call {stall.call_s * 1e3:.0f} ms, "
        f"{stall.status[:120]}; the slowest ServerLive meanwhile {stall.slowest_live_s * 1e3:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
