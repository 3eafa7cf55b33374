"""Tensors in system shared memory: Triton's `shared_memory_region`, `shared_memory_offset` and
`shared_memory_byte_size` parameters on inputs and requested outputs.

An input is copied out of its region (pread: see shm_regions.py; a view of the mapping could be
a SIGBUS if the client truncated its object), so no input views a client's memory; BYTES inputs
use the protocol's 4-byte-length framing. A requested output is written into
its region after the run, and the response carries its name, datatype and shape with an empty
raw_output_contents entry (Triton's form). Every range is checked against the region before it is
touched, and sizes come from the request's shape, never from the region's contents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod

import numpy as np

from batcher.types import Array
from protos import grpc_service_pb2 as pb
from protos import wire
from server import datatypes
from server.errors import InvalidRequest
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.shm_regions import SharedRegion
from server.protocol.validate import TensorSpec

REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
CLASSIFICATION = "classification"
# A BYTES input in shared memory is copied and parsed on the event loop, string by string: at most
# the default max_message_bytes, as much as one request could send on the wire.
MAX_SHM_BYTES_INPUT = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ShmSlice:
    """[offset, offset + byte_size) of a region one request holds (and so keeps mapped)."""

    region: SharedRegion  # system or CUDA
    offset: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class ShmTensors:
    """The shared-memory inputs and outputs of one request, resolved against the registry."""

    inputs: dict[str, ShmSlice]
    outputs: dict[str, ShmSlice]

    def release(self) -> None:
        """Let go of the regions once the request is answered or failed: whatever still holds this
        (a failure's traceback in a reference cycle) no longer keeps them mapped after unregister."""
        self.inputs.clear()
        self.outputs.clear()

    def check_size(self, name: str, dtype: datatypes.Datatype, shape: tuple[int, ...]) -> None:
        """Input `name`'s declared shared_memory_byte_size against its shape, before anything is
        read: a 100-byte request of shape [1] naming a sparse 1 GiB region had the server allocate
        and read it all, 2-4 s on the event loop, before refusing it."""
        part = self.inputs[name]
        if dtype is not datatypes.BYTES:
            expected = prod(shape) * dtype.numpy.itemsize
            if part.byte_size != expected:
                raise InvalidRequest(
                    f"input '{name}': shared_memory_byte_size is {part.byte_size}, expected {expected} "
                    f"for shape {list(shape)} of {dtype.wire}"
                )
        elif part.byte_size > MAX_SHM_BYTES_INPUT:  # its strings are parsed one by one
            raise InvalidRequest(
                f"input '{name}': shared_memory_byte_size {part.byte_size} is over {MAX_SHM_BYTES_INPUT} "
                "bytes, the most a BYTES input in shared memory may hold"
            )

    def unread(self, name: str, dtype: datatypes.Datatype, shape: tuple[int, ...]) -> Array:
        """A stand-in for input `name` (its size checked): its datatype and shape with no data and
        no memory of its size, for the checks that need only those (rows, shapes: request_checks.py)
        before `read` copies the region."""
        self.check_size(name, dtype, shape)
        empty = np.empty((), dtype=dtype.numpy)
        if dtype is datatypes.BYTES:
            empty[()] = b""
        return np.broadcast_to(empty, shape)  # read-only, every element the one above

    def read(self, name: str, dtype: datatypes.Datatype, shape: tuple[int, ...]) -> Array:
        """Input `name`, a copy the client cannot change (shape and datatype checked by the caller;
        its size here, before anything is read)."""
        self.check_size(name, dtype, shape)
        part = self.inputs[name]
        data = part.region.read(part.offset, part.byte_size)  # RegionGone if its object shrank
        if dtype is datatypes.BYTES:
            try:
                return wire.unpack_bytes(memoryview(data), prod(shape)).reshape(shape)  # a copy already
            except ValueError as exc:
                raise InvalidRequest(f"input '{name}': {exc}") from None
        array = data.view(dtype.numpy).reshape(shape)  # a new array: aligned for every datatype
        array.flags.writeable = False  # as raw_input_contents views: nothing downstream writes inputs
        return array

    def read_inputs(self, request: pb.ModelInferRequest) -> dict[str, Array]:
        """The request's inputs in shared memory, read (after decode_inputs checked them)."""
        return {
            t.name: self.read(t.name, datatypes.BY_WIRE[t.datatype], tuple(t.shape))
            for t in request.inputs
            if t.name in self.inputs
        }

    def write(self, name: str, array: Array) -> None:
        """Output `name` into its region; InvalidRequest naming the output when it does not fit."""
        part = self.outputs[name]
        if array.dtype.kind in "OSU":
            source = np.frombuffer(wire.pack_bytes(array), dtype=np.uint8)
        else:
            source = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        self.check_room(name, source.size)
        part.region.check_size()
        part.region.write(part.offset, source)

    def check_room(self, name: str, needed: int, strings: bool = False) -> None:
        """InvalidRequest naming output `name` and its region when `needed` bytes do not fit.
        `strings`: `needed` counts only a BYTES output's lengths, before it is computed."""
        part = self.outputs[name]
        if needed > part.byte_size:  # Triton's wording, but the client's mistake
            least = " plus the strings themselves (known once computed)" if strings else ""
            raise InvalidRequest(
                f"shared memory size specified with the request for output '{name}' "
                f"({part.byte_size} bytes) should be at least {needed} bytes{least} to hold the "
                f"results (region '{part.region.name}')"
            )

    def check_fixed_outputs(
        self, specs: Mapping[str, TensorSpec], names: Sequence[str], rows: int | None
    ) -> None:
        """Refuse, before the request is queued, an output in shared memory whose size the model's
        config fixes (no variable dimension, not BYTES) and that its region cannot hold: checked
        only after the run, it had been computed, counted in queue and compute, then failed. A BYTES
        output of fixed shape takes 4 bytes an element at least (its lengths): a region smaller
        than that is refused too. One with a variable dimension may be empty (a -1 may be 0): its
        size is known only once computed (answer_checks.py, before the run is counted).
        `rows`: the request's rows (None: the model has no batch dimension)."""
        for name in names:
            spec = specs.get(name)
            if name not in self.outputs or spec is None or -1 in spec.dims:
                continue
            shape = spec.dims if rows is None else (rows, *spec.dims)
            strings = spec.datatype is datatypes.BYTES  # 4 bytes of length an element, at least
            self.check_room(name, prod(shape) * (4 if strings else spec.datatype.numpy.itemsize), strings)

    def check_output_objects(self) -> None:
        """Refuse, before the request is queued, an output whose region's object was truncated
        below the region (RegionGone): found only when its answer was written, it had been run,
        and a sequence's state had advanced for a request that failed."""
        for part in self.outputs.values():
            part.region.check_size()


def uses_shared_memory(request: pb.ModelInferRequest) -> bool:
    """Whether any input or requested output names a region (cheap: most tensors have no parameters)."""
    return any(t.parameters and REGION in t.parameters for t in request.inputs) or any(
        t.parameters and REGION in t.parameters for t in request.outputs
    )


def resolve(request: pb.ModelInferRequest, registry: SharedMemoryRegistry | None) -> ShmTensors | None:
    """The request's shared-memory tensors (None when it uses none), each region looked up and its
    range checked; InvalidRequest (or RegionNotFound) naming the tensor otherwise."""
    inputs: dict[str, ShmSlice] = {}
    outputs: dict[str, ShmSlice] = {}
    for tensor in request.inputs:
        if tensor.parameters:
            found = _slice(tensor.name, "input", tensor.parameters, registry)
            if found is not None:
                if tensor.HasField("contents"):  # Triton's rule and wording
                    raise InvalidRequest(
                        f"unexpected 'content' provided when using shared memory for input tensor "
                        f"'{tensor.name}' for model '{request.model_name}'"
                    )
                inputs[tensor.name] = found
    for output in request.outputs:
        if output.parameters:
            found = _slice(output.name, "output", output.parameters, registry)
            if found is not None:
                if CLASSIFICATION in output.parameters:
                    raise InvalidRequest(
                        f"output '{output.name}' can't set both 'shared_memory_region' and 'classification'"
                    )
                outputs[output.name] = found
    if not inputs and not outputs:
        return None
    return ShmTensors(inputs, outputs)


def _slice(
    name: str, kind: str, params: Mapping[str, pb.InferParameter], registry: SharedMemoryRegistry | None
) -> ShmSlice | None:
    region_param = params.get(REGION)
    if region_param is None:
        for other in (OFFSET, BYTE_SIZE):  # Triton's rule: never silently ignored
            if other in params:
                raise InvalidRequest(
                    f"'{other}' can not be specified without '{REGION}' parameter for {kind} '{name}'"
                )
        return None
    if region_param.WhichOneof("parameter_choice") != "string_param":
        raise InvalidRequest(
            f"invalid value type for '{REGION}' parameter for {kind} '{name}', expected string_param"
        )
    if BYTE_SIZE not in params:
        raise InvalidRequest(
            f"'{BYTE_SIZE}' must be specified along with '{REGION}' parameter for {kind} '{name}'"
        )
    byte_size = _non_negative(name, kind, BYTE_SIZE, params[BYTE_SIZE])
    offset = _non_negative(name, kind, OFFSET, params[OFFSET]) if OFFSET in params else 0
    if registry is None:
        raise InvalidRequest(f"{kind} '{name}': this server does not serve tensors in shared memory")
    region = registry.lookup(region_param.string_param)
    if offset + byte_size > region.byte_size:
        raise InvalidRequest(
            f"{kind} '{name}': shared_memory_offset {offset} + shared_memory_byte_size {byte_size} "
            f"is beyond region '{region.name}' ({region.byte_size} bytes)"
        )
    return ShmSlice(region, offset, byte_size)


def _non_negative(name: str, kind: str, param_name: str, param: pb.InferParameter) -> int:
    choice = param.WhichOneof("parameter_choice")
    if choice not in ("int64_param", "uint64_param"):
        raise InvalidRequest(
            f"invalid value type for '{param_name}' parameter for {kind} '{name}', expected int64_param"
        )
    value = int(getattr(param, choice))
    if value < 0:
        raise InvalidRequest(f"{kind} '{name}': '{param_name}' must be >= 0, got {value}")
    return value
