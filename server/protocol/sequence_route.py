"""Route a request's sequence parameters to its model's SequenceBatcher (batcher/sequence.py).

A model with sequence_batching takes only requests naming a sequence; any other model refuses the
sequence parameters, naming the parameter (Triton's wording where it has one).
"""

from __future__ import annotations

from batcher.admission import Admission
from batcher.types import QueueTrace, Tensors
from server import triton_text
from server.errors import InvalidRequest
from server.models.versions import ModelVersion
from server.protocol.sequence_params import SEQUENCE_ID, SequenceParams


def check_sequence(served: ModelVersion, sequence: SequenceParams | None) -> None:
    if served.ensemble is not None:
        return  # its sequence steps take the sequence, the others ignore it (models/ensemble.py)
    if served.sequences is None:
        if sequence is not None:
            raise InvalidRequest(
                f"parameter '{SEQUENCE_ID}': model '{served.name}' has no sequence_batching "
                "(send sequence parameters only to models with it)"
            )
    elif sequence is None:
        raise InvalidRequest(f"{triton_text.no_correlation_id(served.name)} (parameter '{SEQUENCE_ID}')")


async def sequence_outputs(
    served: ModelVersion,
    sequence: SequenceParams,
    inputs: Tensors,
    admission: Admission,
    trace: QueueTrace | None,
    owner: object | None = None,
) -> Tensors:
    """The request's outputs, run in its sequence's turn with the sequence's state (`owner`: the
    stream that sent it, if one did)."""
    sequences = served.sequences
    if sequences is None:  # retargeted to a version without sequence_batching
        check_sequence(served, sequence)
        raise AssertionError("unreachable")
    return await sequences.infer(
        sequence.sid, inputs, admission, start=sequence.start, end=sequence.end, trace=trace, owner=owner
    )
