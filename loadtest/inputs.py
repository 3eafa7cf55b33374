"""Request payloads: input arrays from ModelMetadata (or .npy files), serialized once, sent many times.

Workers send these bytes as they are (no per-request protobuf work), which keeps the client cheap.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import numpy as np

from clients.tensors import DTYPE_BY_WIRE, build_request, set_timeout
from loadtest import channels
from loadtest.scenario import PLAINTEXT, Mode, Scenario, Security, Target
from loadtest.shapes import InputMismatch, input_shapes, rows_sent
from loadtest.start import CONNECT_WAIT_S, TargetUnreachable
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

SOURCES = ("auto", "random", "video", "sensor")
# Distinct payloads per target: enough that no cache sees one request, few enough to ship cheaply.
UNARY_VARIANTS = 8
STREAM_FRAMES = 30
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024

Arrays = dict[str, np.ndarray]


def fetch_metadata(
    target: Target, timeout_s: float = 10.0, security: Security = PLAINTEXT
) -> pb.ModelMetadataResponse:
    """The target model's inputs. A target that accepts no connection within CONNECT_WAIT_S (the
    wait a worker gives it before each step) raises TargetUnreachable (exit 3, as the same target
    gone before a later step; it had been a ValueError, a usage error's exit 2); then up to
    timeout_s for the answer."""
    with channels.channel(target.address, security) as opened:
        try:
            grpc.channel_ready_future(opened).result(timeout=CONNECT_WAIT_S)
        except grpc.FutureTimeoutError:
            raise TargetUnreachable(
                f"target {target.address} accepted no connection within {CONNECT_WAIT_S:g} s (is a "
                "server listening there?)"
            ) from None
        stub = pb_grpc.GRPCInferenceServiceStub(opened)  # type: ignore[no-untyped-call]
        response: pb.ModelMetadataResponse = stub.ModelMetadata(
            pb.ModelMetadataRequest(name=target.model),
            timeout=timeout_s,
            wait_for_ready=True,
            metadata=channels.metadata(security),
        )
        return response


def pick_source(source: str, mode: Mode, shapes: Mapping[str, tuple[int, ...]]) -> str:
    if source != "auto":
        return source
    if mode != "stream":
        return "random"
    # Image-like inputs (channels, height, width) get video frames; flat vectors get sensor readings.
    return "video" if any(len(shape) >= 4 for shape in shapes.values()) else "sensor"


def generate(
    metadata: pb.ModelMetadataResponse,
    shapes: Mapping[str, tuple[int, ...]],
    source: str,
    count: int,
    seed: int,
) -> list[Arrays]:
    """`count` input sets of the model's datatypes: random, video frames (a moving gradient with
    a little noise) or sensor readings (a random walk); frame k follows frame k-1."""
    rng = np.random.default_rng(seed)
    sets: list[Arrays] = [{} for _ in range(count)]
    for tensor in metadata.inputs:
        shape = shapes[tensor.name]
        if source == "video":
            frames = _video(shape, count, rng)
        elif source == "sensor":
            frames = _sensor(shape, count, rng)
        else:
            frames = [rng.random(shape) for _ in range(count)]
        for k in range(count):
            sets[k][tensor.name] = _as_datatype(frames[k], tensor.datatype, rng)
    return sets


def _video(shape: tuple[int, ...], count: int, rng: np.random.Generator) -> list[np.ndarray]:
    width = shape[-1] if shape else 1
    x = np.arange(width) / max(1, width)
    frames = []
    for k in range(count):
        row = 0.5 + 0.5 * np.sin(2 * np.pi * (x + k / count))
        frame = np.broadcast_to(row, shape) + rng.normal(0, 0.02, shape)
        frames.append(np.clip(frame, 0.0, 1.0))
    return frames


def _sensor(shape: tuple[int, ...], count: int, rng: np.random.Generator) -> list[np.ndarray]:
    walk = np.cumsum(rng.normal(0, 0.05, (count, *shape)), axis=0) + 0.5
    return list(walk)


def _as_datatype(values: np.ndarray, datatype: str, rng: np.random.Generator) -> np.ndarray:
    """Values in [0, 1] (roughly) as the wire datatype: scaled for integers, bytes for BYTES."""
    if datatype == "BYTES":
        flat = [f"{v:.4f}".encode() for v in values.reshape(-1)]
        return np.array(flat, dtype=object).reshape(values.shape)
    dtype = DTYPE_BY_WIRE.get(datatype)
    if dtype is None:
        raise ValueError(f"datatype {datatype} is not supported by the load generator")
    if dtype.kind == "b":
        return values > 0.5
    if dtype.kind in "iu":
        top = min(255, int(np.iinfo(dtype.str).max))
        scaled: np.ndarray = (np.clip(values, 0, 1) * top).astype(dtype)
        return scaled
    return values.astype(dtype)


def load_files(metadata: pb.ModelMetadataResponse, files: Mapping[str, str], batch_size: int) -> Arrays:
    """Arrays from .npy files, cast to the model's datatype; a missing batch dim is added by tiling."""
    by_name = {tensor.name: tensor for tensor in metadata.inputs}
    arrays: Arrays = {}
    for name, path in files.items():
        if name not in by_name:
            raise ValueError(f"--input {name}: the model has no such input (inputs: {sorted(by_name)})")
        tensor = by_name[name]
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"--input {name}: cannot read {path}: {err}") from None
        batched = bool(tensor.shape) and tensor.shape[0] == -1
        if array.ndim == len(tensor.shape) - 1 and batched:
            array = np.repeat(array[np.newaxis], batch_size, axis=0)
        elif batched and array.ndim == len(tensor.shape) and len(array) != batch_size:
            # The results count --batch-size rows a request: 8 rows sent with the default 1 read
            # as an eighth of the rows the server computed.
            raise ValueError(
                f"--input {name}: {path} holds {len(array)} rows but --batch-size is {batch_size}: "
                f"pass --batch-size {len(array)}"
            )
        if tensor.datatype != "BYTES":
            array = array.astype(DTYPE_BY_WIRE[tensor.datatype], copy=False)
        arrays[name] = array
    return arrays


def payloads_for(target: Target, scenario: Scenario, mode: Mode) -> tuple[bytes, ...]:
    """Serialized ModelInferRequests for one target and mode, from metadata or files."""
    metadata = fetch_metadata(target, security=scenario.security)
    if not metadata.inputs and target != scenario.targets[0]:
        # Some servers (MLServer without declared tensors) publish no input metadata; the scenario
        # is the same for every target, so the first target's metadata describes the inputs.
        metadata = fetch_metadata(scenario.targets[0], security=scenario.security)
    shapes = input_shapes(metadata, scenario.batch_size, scenario.shapes)
    source = pick_source(scenario.source, mode, shapes)
    count = STREAM_FRAMES if mode == "stream" else UNARY_VARIANTS
    sets = generate(metadata, shapes, source, count, scenario.seed)
    if scenario.input_files:
        files = load_files(metadata, scenario.input_files, scenario.batch_size)
        sets = [{**generated, **files} for generated in sets]
    # The results count --batch-size rows a request (throughput_ips); what is sent must carry them.
    rows = rows_sent(metadata, {name: array.shape for name, array in sets[0].items()})
    if rows != scenario.batch_size:
        raise InputMismatch(f"a request would carry {rows} rows but --batch-size is {scenario.batch_size}")
    deadline_s = scenario.deadline_ms / 1000 if scenario.deadline_ms else None
    payloads: list[bytes] = []
    total = 0
    for arrays in sets:
        payload = serialize(target.model, arrays, deadline_s)
        total += len(payload)
        if payloads and total > MAX_PAYLOAD_BYTES:
            break
        payloads.append(payload)
    return tuple(payloads)


def serialize(model: str, arrays: Mapping[str, np.ndarray], deadline_s: float | None) -> bytes:
    request = build_request(model, arrays)
    if deadline_s is not None:
        set_timeout(request, deadline_s)
    data: bytes = request.SerializeToString()
    return data
