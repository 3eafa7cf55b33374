"""Route a request's sequence parameters to its model's SequenceBatcher (batcher/sequence.py).

Which models take sequence parameters is checked with the request's other checks
(server/protocol/request_checks.py `check_sequence_params`).
"""

from __future__ import annotations

from batcher.admission import Admission
from batcher.sequence import Answer
from batcher.types import QueueTrace, Tensors
from server.models.versions import ModelVersion
from server.protocol.request_checks import check_sequence_params
from server.protocol.sequence_params import SequenceParams


def check_sequence(served: ModelVersion, sequence: SequenceParams | None) -> None:
    if served.ensemble is None:  # an ensemble's sequence steps take the sequence, the others ignore it
        check_sequence_params(served.name, served.sequences is not None, sequence)


async def sequence_outputs(
    served: ModelVersion,
    sequence: SequenceParams,
    inputs: Tensors,
    admission: Admission,
    trace: QueueTrace | None,
    owner: object | None = None,
    answer: Answer | None = None,
) -> Tensors:
    """The request's outputs, run in its sequence's turn with the sequence's state (`owner`: the
    stream that sent it, if one did; `answer`: see SequenceBatcher.infer)."""
    sequences = served.sequences
    if sequences is None:  # retargeted to a version without sequence_batching
        check_sequence(served, sequence)
        raise AssertionError("unreachable")
    return await sequences.infer(
        sequence.sid,
        inputs,
        admission,
        start=sequence.start,
        end=sequence.end,
        trace=trace,
        owner=owner,
        answer=answer,
    )
