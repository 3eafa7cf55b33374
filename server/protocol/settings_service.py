"""Triton's TraceSetting and LogSettings RPCs, as a mixin InferenceServicer inherits (it sets
`trace_settings`, `log_settings` and `_models`). The rules live in server/observability
(trace_settings.py, log_settings.py); here the wire form is read and written. Settings belong to
the process that answers: under `--workers N`, to that worker only."""

from __future__ import annotations

import logging

import grpc

from protos import grpc_service_pb2 as pb
from server.errors import ModelNotFound
from server.models.manager import ModelManager
from server.observability import log_settings as logs
from server.observability.log_settings import LogSettings, Typed
from server.observability.trace_settings import TraceSettings
from server.protocol.answers import answers_errors
from server.protocol.calls import CallTracker

log = logging.getLogger(__name__)

_KINDS: dict[str | None, logs.Kind] = {
    "bool_param": "bool",
    "uint32_param": "uint32",
    "string_param": "string",
    None: None,
}


class SettingsRpcs:
    trace_settings: TraceSettings
    log_settings: LogSettings
    calls: CallTracker
    _models: ModelManager

    @answers_errors
    async def TraceSetting(
        self, request: pb.TraceSettingRequest, context: grpc.aio.ServicerContext
    ) -> pb.TraceSettingResponse:
        self.trace_settings.keep(self._known)  # models gone since: their settings with them
        if request.model_name:
            self._models.entry(request.model_name)  # NOT_FOUND as every call naming a model
        if request.settings:
            changes = {name: list(value.value) for name, value in request.settings.items()}
            if self.trace_settings.update(request.model_name, changes):
                log.warning(
                    "trace_level %s asked, but tracing is off (start the server with --tracing): "
                    "no spans are made (said once)",
                    "/".join(self.trace_settings.view(request.model_name)["trace_level"]),
                )
        value = pb.TraceSettingResponse.SettingValue
        shown = self.trace_settings.view(request.model_name)
        return pb.TraceSettingResponse(settings={name: value(value=v) for name, v in shown.items()})

    def _known(self, name: str) -> bool:
        try:
            self._models.entry(name)
        except ModelNotFound:
            return False
        return True

    @answers_errors
    async def LogSettings(
        self, request: pb.LogSettingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.LogSettingsResponse:
        if request.settings:
            changes: dict[str, Typed] = {}
            for name, value in request.settings.items():
                chosen = value.WhichOneof("parameter_choice")
                changes[name] = (_KINDS[chosen], None if chosen is None else getattr(value, chosen))
            self.log_settings.update(changes)
        return pb.LogSettingsResponse(settings={n: _typed(v) for n, v in self.log_settings.view().items()})


def _typed(value: bool | int | str) -> pb.LogSettingsResponse.SettingValue:
    wire = pb.LogSettingsResponse.SettingValue
    if isinstance(value, bool):  # before int: a bool is an int
        return wire(bool_param=value)
    if isinstance(value, int):
        return wire(uint32_param=value)
    return wire(string_param=value)
