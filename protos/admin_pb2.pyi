from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutStatusRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SetWeightsRequest(_message.Message):
    __slots__ = ("model", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: _containers.ScalarMap[int, int]
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[_Mapping[int, int]] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model", "version", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class VersionFigures(_message.Message):
    __slots__ = ("version", "weight", "share", "role", "rolled_back", "requests", "errors", "error_rate", "p50_ms", "p99_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    version: int
    weight: int
    share: float
    role: str
    rolled_back: bool
    requests: int
    errors: int
    error_rate: float
    p50_ms: float
    p99_ms: float
    def __init__(self, version: _Optional[int] = ..., weight: _Optional[int] = ..., share: _Optional[float] = ..., role: _Optional[str] = ..., rolled_back: _Optional[bool] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., error_rate: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ...) -> None: ...

class ShadowFigures(_message.Message):
    __slots__ = ("version", "fraction", "mirrored", "compared", "errors", "shed", "dropped", "max_abs_diff", "argmax_rows", "argmax_agree", "shadow_p50_ms", "shadow_p99_ms", "stable_p50_ms", "stable_p99_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MIRRORED_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SHED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    ARGMAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    ARGMAX_AGREE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_P50_MS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_P99_MS_FIELD_NUMBER: _ClassVar[int]
    STABLE_P50_MS_FIELD_NUMBER: _ClassVar[int]
    STABLE_P99_MS_FIELD_NUMBER: _ClassVar[int]
    version: int
    fraction: float
    mirrored: int
    compared: int
    errors: int
    shed: int
    dropped: int
    max_abs_diff: float
    argmax_rows: int
    argmax_agree: int
    shadow_p50_ms: float
    shadow_p99_ms: float
    stable_p50_ms: float
    stable_p99_ms: float
    def __init__(self, version: _Optional[int] = ..., fraction: _Optional[float] = ..., mirrored: _Optional[int] = ..., compared: _Optional[int] = ..., errors: _Optional[int] = ..., shed: _Optional[int] = ..., dropped: _Optional[int] = ..., max_abs_diff: _Optional[float] = ..., argmax_rows: _Optional[int] = ..., argmax_agree: _Optional[int] = ..., shadow_p50_ms: _Optional[float] = ..., shadow_p99_ms: _Optional[float] = ..., stable_p50_ms: _Optional[float] = ..., stable_p99_ms: _Optional[float] = ...) -> None: ...

class RollbackEvent(_message.Message):
    __slots__ = ("version", "trigger", "reason", "unix_time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UNIX_TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    trigger: str
    reason: str
    unix_time: float
    def __init__(self, version: _Optional[int] = ..., trigger: _Optional[str] = ..., reason: _Optional[str] = ..., unix_time: _Optional[float] = ...) -> None: ...

class RollbackPolicy(_message.Message):
    __slots__ = ("enabled", "window_s", "min_requests", "error_margin", "latency_margin")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MARGIN_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MARGIN_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    window_s: float
    min_requests: int
    error_margin: float
    latency_margin: float
    def __init__(self, enabled: _Optional[bool] = ..., window_s: _Optional[float] = ..., min_requests: _Optional[int] = ..., error_margin: _Optional[float] = ..., latency_margin: _Optional[float] = ...) -> None: ...

class RolloutStatusResponse(_message.Message):
    __slots__ = ("model", "source", "sticky_key", "versions", "has_shadow", "shadow", "rollback", "events", "rollbacks", "worker")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STICKY_KEY_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    HAS_SHADOW_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ROLLBACKS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    model: str
    source: str
    sticky_key: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionFigures]
    has_shadow: bool
    shadow: ShadowFigures
    rollback: RollbackPolicy
    events: _containers.RepeatedCompositeFieldContainer[RollbackEvent]
    rollbacks: int
    worker: str
    def __init__(self, model: _Optional[str] = ..., source: _Optional[str] = ..., sticky_key: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionFigures, _Mapping]]] = ..., has_shadow: _Optional[bool] = ..., shadow: _Optional[_Union[ShadowFigures, _Mapping]] = ..., rollback: _Optional[_Union[RollbackPolicy, _Mapping]] = ..., events: _Optional[_Iterable[_Union[RollbackEvent, _Mapping]]] = ..., rollbacks: _Optional[int] = ..., worker: _Optional[str] = ...) -> None: ...
