"""The sequence parameters of a request: `sequence_id`, `sequence_start`, `sequence_end`.

Triton's meaning: the id is an unsigned integer (int64_param or uint64_param) or a string
(string_param); 0 and "" mean "no sequence". The flags are bool_param. Which model takes them is
checked where the model is known (server/protocol/sequence_route.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from batcher.sequence_types import SequenceId
from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest

SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END = "sequence_id", "sequence_start", "sequence_end"
# A string id's bound: the batcher keeps ids (live ones, and the last released ones to name them
# in errors), so an id's size is memory the caller chooses: 40 ids of 8 MiB kept ~400 MB.
MAX_SEQUENCE_ID_BYTES = 1024


@dataclass(frozen=True, slots=True)
class SequenceParams:
    sid: SequenceId
    start: bool
    end: bool


def sequence_id(param: pb.InferParameter) -> SequenceId:
    """The id a `sequence_id` parameter holds (0 or "": none); InvalidRequest if not an id."""
    kind = param.WhichOneof("parameter_choice")
    if kind == "uint64_param":
        return int(param.uint64_param)
    if kind == "int64_param":
        if param.int64_param < 0:
            raise InvalidRequest(f"parameter '{SEQUENCE_ID}' must be >= 0, got {param.int64_param}")
        return int(param.int64_param)
    if kind == "string_param":
        size = len(param.string_param.encode("utf-8"))
        if size > MAX_SEQUENCE_ID_BYTES:
            raise InvalidRequest(
                f"parameter '{SEQUENCE_ID}' is a string of {size} bytes; at most {MAX_SEQUENCE_ID_BYTES}"
            )
        return str(param.string_param)
    raise InvalidRequest(
        f"parameter '{SEQUENCE_ID}' must be an unsigned integer or a string, got {kind or 'nothing'}"
    )


def _flag(parameters: Mapping[str, pb.InferParameter], name: str) -> bool:
    param = parameters.get(name)
    if param is None:
        return False
    kind = param.WhichOneof("parameter_choice")
    if kind != "bool_param":  # no value too: Triton's "expected bool_param", as for every other parameter
        raise InvalidRequest(f"parameter '{name}' must be a bool, got {kind or 'nothing'}")
    return bool(param.bool_param)


def parse_sequence(parameters: Mapping[str, pb.InferParameter]) -> SequenceParams | None:
    """The request's sequence parameters, or None when it names no sequence."""
    param = parameters.get(SEQUENCE_ID)
    sid = sequence_id(param) if param is not None else 0
    start, end = _flag(parameters, SEQUENCE_START), _flag(parameters, SEQUENCE_END)
    if sid == 0 or sid == "":
        for name, on in ((SEQUENCE_START, start), (SEQUENCE_END, end)):
            if on:
                raise InvalidRequest(f"parameter '{name}' is set but '{SEQUENCE_ID}' names no sequence")
        return None
    return SequenceParams(sid, start, end)
