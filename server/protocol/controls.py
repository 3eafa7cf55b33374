"""Per-request controls carried in ModelInferRequest.parameters.

`timeout` (microseconds, Triton's meaning) and `priority` are honoured; sequence parameters are
refused until sequence batching exists; every other parameter is ignored (clients such as
perf_analyzer send their own).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest

_SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


@dataclass(frozen=True, slots=True)
class Controls:
    timeout_s: float | None = None
    priority: int = 0  # 0: the model's default level


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
    for name in _SEQUENCE_PARAMETERS:
        param = parameters.get(name)
        if param is not None and param.WhichOneof("parameter_choice") and _truthy(param):
            raise InvalidRequest(f"parameter '{name}': sequence batching is not supported yet")
    return Controls(timeout_s=timeout_s, priority=priority)


def _truthy(param: pb.InferParameter) -> bool:
    kind = param.WhichOneof("parameter_choice")
    value = getattr(param, kind) if kind else None
    return bool(value) and value != "0"
