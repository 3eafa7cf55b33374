"""Per-request controls carried in ModelInferRequest.parameters.

`timeout` (microseconds, Triton's meaning), `priority` and the sequence parameters
(server/protocol/sequence_params.py) are honoured; the stream flags `latest_frame_wins` and
`triton_enable_empty_final_response` are type-checked; every other parameter is ignored (clients
such as perf_analyzer send their own). A known parameter with a value of another type, or with no
value, is INVALID_ARGUMENT naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest
from server.protocol.sequence_params import SequenceParams, parse_sequence


@dataclass(frozen=True, slots=True)
class Controls:
    timeout_s: float | None = None
    priority: int = 0  # 0: the model's default level
    sequence: SequenceParams | None = None  # sequence_id / sequence_start / sequence_end


NO_CONTROLS = Controls()


def _integer(name: str, param: pb.InferParameter) -> int:
    kind = param.WhichOneof("parameter_choice")
    if kind == "int64_param":
        return int(param.int64_param)
    if kind == "uint64_param":
        return int(param.uint64_param)
    raise InvalidRequest(f"parameter '{name}' must be an integer, got {kind or 'nothing'}")


def parse_controls(parameters: Mapping[str, pb.InferParameter]) -> Controls:
    if not parameters:
        return NO_CONTROLS
    timeout_s: float | None = None
    priority = 0
    if "timeout" in parameters:
        timeout_us = _integer("timeout", parameters["timeout"])
        if timeout_us < 0:
            raise InvalidRequest(f"parameter 'timeout' must be >= 0 microseconds, got {timeout_us}")
        timeout_s = timeout_us / 1e6 if timeout_us > 0 else None  # 0 means no timeout
    if "priority" in parameters:
        priority = _integer("priority", parameters["priority"])
        if priority < 0:
            raise InvalidRequest(f"parameter 'priority' must be >= 0, got {priority}")
    for name in (LATEST_FRAME_WINS, ENABLE_FINAL_RESPONSE):  # stream flags, checked on a unary call too
        if name in parameters:
            _bool(name, parameters[name])
    return Controls(timeout_s=timeout_s, priority=priority, sequence=parse_sequence(parameters))


def try_parse_controls(parameters: Mapping[str, pb.InferParameter]) -> Controls | None:
    """`parse_controls`, or None when it refuses a parameter (parsed again where the request is
    refused, to name it)."""
    try:
        return parse_controls(parameters)
    except InvalidRequest:
        return None


LATEST_FRAME_WINS = "latest_frame_wins"
# tritonclient's enable_empty_final_response: asks a decoupled model for an empty last answer. No
# model here is decoupled, and every stream answer carries the final flag (server/protocol/stream.py),
# so it asks for nothing; Triton refuses a value that is not a bool ("expected bool_param"), as here.
ENABLE_FINAL_RESPONSE = "triton_enable_empty_final_response"


def _bool(name: str, param: pb.InferParameter) -> bool:
    kind = param.WhichOneof("parameter_choice")
    if kind != "bool_param":
        raise InvalidRequest(f"parameter '{name}' must be a bool, got {kind or 'nothing'}")
    return bool(param.bool_param)


def latest_frame_wins(parameters: Mapping[str, pb.InferParameter]) -> bool | None:
    """The request's own latest-frame-wins choice (server/protocol/latest_frame.py); None: absent,
    the model's setting applies."""
    param = parameters.get(LATEST_FRAME_WINS)
    return None if param is None else _bool(LATEST_FRAME_WINS, param)
