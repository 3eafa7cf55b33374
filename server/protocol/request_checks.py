"""The ordered checks a request passes against its model's signature before it is admitted: one
sequence for a loaded model (InferJob.prepare) and for a lazy model judged before its load
(declared.py), so a request with several faults is refused for the same first one, with the same
status and message, either way (the early judge had checked names before datatypes, shapes in the
request's order, and no byte sizes or shared-memory regions).

Order (Triton's where it has one): datatypes as declared, shared-memory regions, decoding (counts,
byte sizes), names, each input in the model's order (datatype, text, shape, reshape), rows, outputs,
outputs' shared-memory room, request parameters, sequence parameters, and last the inputs in shared
memory read (a region whose object shrank, a BYTES input's framing and text): everything before
judges them by their declared datatype, shape and byte size, so nothing is read for a request
these checks refuse. What follows (admission, classification, a sequence's single row) is
InferJob.prepare's and the batcher's, after the read (a request refused there has been read, at
most max_batch_size rows; the queued-bytes budgets likewise); declared.py judges the parts of it
that need no loaded model, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from batcher.types import Tensors
from protos import grpc_service_pb2 as pb
from server import triton_text
from server.errors import InvalidRequest
from server.protocol import codec, shm_tensors
from server.protocol.controls import Controls, parse_controls
from server.protocol.sequence_params import SEQUENCE_ID, SequenceParams
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.shm_tensors import ShmTensors
from server.protocol.validate import Signature


@dataclass(frozen=True, slots=True)
class Checked:
    """What the checks settled about one request."""

    shm: ShmTensors | None  # its tensors in shared memory (None: none)
    inputs: Tensors  # decoded
    rows: int  # 1 for a model without a batch dimension
    names: Sequence[str]  # the outputs to return
    controls: Controls


def check_request(
    signature: Signature,
    request: pb.ModelInferRequest,
    regions: SharedMemoryRegistry | None,
    controls: Controls | None,
    *,
    sequences: bool | None,
) -> Checked:
    """Run the checks in order; raises the first fault's error (InvalidRequest naming the field,
    RegionNotFound, ...). `controls`: the request's parameters if parsed already (None: parsed
    here, where a refused one is named). `sequences`: whether the model has sequence_batching (None:
    an ensemble, whose steps judge the sequence)."""
    check_counts(signature, request)
    signature.check_declared_datatypes(request.inputs)
    shm = shm_tensors.resolve(request, regions)
    # Inputs in shared memory are read last, once everything else has passed: as stand-ins of their
    # shape until then. Read first, a request of 4,194,304 rows to a model of max_batch_size 128
    # naming 1 GiB had the server copy it all (3 s of the event loop, peak memory 117 MB -> 1.17 GB)
    # before refusing it for its rows.
    inputs = codec.decode_inputs(request, shm, read_shm=False)
    rows = signature.check_inputs(inputs)
    names = signature.check_outputs(codec.requested_outputs(request))
    if shm is not None and shm.outputs:
        shm.check_fixed_outputs(signature.outputs, names, rows if signature.max_batch_size > 0 else None)
        shm.check_output_objects()
    if controls is None:
        controls = parse_controls(request.parameters)
    if sequences is not None:
        check_sequence_params(signature.model, sequences, controls.sequence)
    if shm is not None and shm.inputs:
        read = shm.read_inputs(request)  # RegionGone, or a BYTES input's framing, refused here
        signature.check_texts(read)  # the stand-ins' text was empty
        inputs = {name: read.get(name, array) for name, array in inputs.items()}  # the request's order
    return Checked(shm, inputs, rows, names, controls)


def check_counts(signature: Signature, request: pb.ModelInferRequest) -> None:
    """A request naming more inputs or outputs than the model has is refused from its first few,
    with the fault the full checks would name (a name not the model's, or one named twice): those
    walk every tensor, and 100,000 requested outputs (a 500 KB frame) took 67 ms of the event loop
    before the first check refused the request."""
    if len(request.outputs) > len(signature.outputs):
        signature.check_outputs([o.name for o in request.outputs[: len(signature.outputs) + 1]])
    if len(request.inputs) > len(signature.inputs):
        names = [t.name for t in request.inputs[: len(signature.inputs) + 1]]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise InvalidRequest(f"input '{name}' appears more than once")  # as codec says it
        signature.check_input_names(names)  # M + 1 names, none twice: one is not the model's


def check_sequence_params(model: str, sequences: bool, sequence: SequenceParams | None) -> None:
    """A model with sequence_batching takes only requests naming a sequence; any other model
    refuses the sequence parameters, naming the parameter (Triton's wording where it has one)."""
    if not sequences:
        if sequence is not None:
            raise InvalidRequest(
                f"parameter '{SEQUENCE_ID}': model '{model}' has no sequence_batching "
                "(send sequence parameters only to models with it)"
            )
    elif sequence is None:
        raise InvalidRequest(f"{triton_text.no_correlation_id(model)} (parameter '{SEQUENCE_ID}')")
