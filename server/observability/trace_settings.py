"""Triton's trace settings (the TraceSetting RPC), server-wide and per model, and the gate they
make: which new requests get a span.

Settings (Triton's names, each a list of strings on the wire):
    trace_level    OFF, or TIMESTAMPS and/or TENSORS: OFF makes no request spans; TENSORS adds
                   nothing to TIMESTAMPS (spans never carry tensor contents)
    trace_rate     1 in N new requests is offered to the sampler (1: each)
    trace_count    how many more requests may be offered to the sampler (-1: no limit); it counts
                   down (below a sample ratio of 1, some of them are not traced)
    log_frequency  accepted for Triton's tools (perf_analyzer's --log-frequency); spans go to the
                   OpenTelemetry exporter, never to trace files, so it changes nothing
    trace_mode     opentelemetry, the only mode
and, read only: tracing (on or off: the server's `--tracing`) and tracing_sample_ratio.

A model's own value shadows the server-wide one until it is cleared (an empty value list); a
cleared server-wide value goes back to its value at start. A request whose caller sent a valid
`traceparent` is not counted by trace_rate or trace_count: its parent decides (ParentBased), as a
propagated context forces sampling in Triton; trace_level OFF still stops it.

Every change of a call is checked before any applies: a bad key or value changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from server.errors import InvalidRequest, Unsupported

LEVEL, RATE, COUNT, LOG_FREQUENCY, MODE, FILE = (
    "trace_level",
    "trace_rate",
    "trace_count",
    "log_frequency",
    "trace_mode",
    "trace_file",
)
TRACING, SAMPLE_RATIO = "tracing", "tracing_sample_ratio"  # ours, read only
LEVELS = ("TIMESTAMPS", "TENSORS")  # in the order a response lists them
OFF = "OFF"
OPENTELEMETRY = "opentelemetry"
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
KNOWN = (LEVEL, RATE, COUNT, LOG_FREQUENCY, MODE, FILE, TRACING, SAMPLE_RATIO)
Value = tuple[str, ...] | int | str
CLEAR = None


@dataclass(slots=True)
class _Holder:
    """The values one scope (server-wide, or a model) set itself, and its request counter."""

    values: dict[str, Value] = field(default_factory=dict)
    seen: int = 0  # new requests counted for trace_rate since its rate was set


class TraceSettings:
    """The server-wide and per-model trace settings of one server process, and `admit`."""

    def __init__(self, tracer: bool, sample_ratio: float) -> None:
        self.tracer = tracer  # the server was started with --tracing: spans can be made
        self._sample_ratio = sample_ratio
        # Values at start: traced when --tracing is on, each request offered to the sampler.
        self._defaults: dict[str, Value] = {
            LEVEL: (LEVELS[0],) if tracer else (OFF,),
            RATE: 1,
            COUNT: -1,
            LOG_FREQUENCY: 0,
        }
        self._global = _Holder()
        self._models: dict[str, _Holder] = {}
        self._told_off = False  # a level asked without a tracer has been logged

    # -- the RPC ------------------------------------------------------------------------------

    def update(self, model: str, settings: Mapping[str, Sequence[str]]) -> bool:
        """Apply one call's changes to `model`'s settings ("" server-wide), all or none. True the
        first time a level other than OFF is set on a server without a tracer (to say so once)."""
        changes = {name: parse(name, list(values)) for name, values in settings.items()}
        holder = self._models.get(model, _Holder()) if model else self._global
        for name, value in changes.items():
            if name == MODE:  # opentelemetry is the only mode: nothing to keep
                continue
            if value is CLEAR:
                holder.values.pop(name, None)
            else:
                holder.values[name] = value
            if name == RATE:
                holder.seen = 0  # a new rate counts from its own first request
        if model:
            if holder.values:
                self._models[model] = holder
            else:  # nothing of its own left: it follows the server-wide settings again
                self._models.pop(model, None)
        if self.tracer or self._told_off or self._value(model, LEVEL) == (OFF,):
            return False
        self._told_off = True
        return True

    def view(self, model: str) -> dict[str, list[str]]:
        """Every setting as it applies to `model` ("" server-wide), in the wire's string form."""
        level = self._value(model, LEVEL)
        assert isinstance(level, tuple)
        return {
            LEVEL: list(level),
            RATE: [str(self._value(model, RATE))],
            COUNT: [str(self._value(model, COUNT))],
            LOG_FREQUENCY: [str(self._value(model, LOG_FREQUENCY))],  # kept for Triton's tools
            MODE: [OPENTELEMETRY],
            TRACING: ["on" if self.tracer else "off"],
            SAMPLE_RATIO: [f"{self._sample_ratio:g}"],
        }

    def keep(self, known: Callable[[str], bool]) -> None:
        """Drop the settings of models no longer `known` (an uploaded model unloaded, gone from
        the repository): a model loaded later under that name starts from the server-wide ones,
        and names that come and go hold nothing (they had been kept, ~1 kB each, for good)."""
        for name in [name for name in self._models if not known(name)]:
            del self._models[name]

    # -- the request path ---------------------------------------------------------------------

    def admit(self, model: str, has_parent: bool) -> bool:
        """Whether a new request of `model` may get a span (the sampler still decides after).

        Counts it for trace_rate; a taken trace counts trace_count down. A request whose caller
        sent a trace context is left to its parent, uncounted."""
        if self._value(model, LEVEL) == (OFF,):
            return False
        if has_parent:
            return True
        owner = self._models.get(model, self._global)
        rate = self._value(model, RATE)
        assert isinstance(rate, int)
        owner.seen += 1
        if owner.seen % rate:
            return False
        counted = self._holder_of(model, COUNT)
        left = self._value(model, COUNT)
        assert isinstance(left, int)
        if left == 0:
            return False
        if left > 0 and counted is not None:  # -1: no limit (the default's never counts down)
            counted.values[COUNT] = left - 1
        return True

    def _holder_of(self, model: str, name: str) -> _Holder | None:
        """The holder whose own value of `name` applies to `model`; None: the value at start."""
        own = self._models.get(model)
        if own is not None and name in own.values:
            return own
        return self._global if name in self._global.values else None

    def _value(self, model: str, name: str) -> Value:
        holder = self._holder_of(model, name)
        return self._defaults[name] if holder is None else holder.values[name]


def parse(name: str, values: list[str]) -> Value | None:
    """One setting's new value (CLEAR for an empty list), or the error naming it."""
    if name == FILE:
        raise Unsupported(
            "trace file location can not be updated through network protocol; spans go to the "
            "OpenTelemetry exporter chosen at start (tracing_exporter), never to a trace file"
        )
    if name in (TRACING, SAMPLE_RATIO):
        flag = "--tracing" if name == TRACING else "--tracing-sample-ratio"
        raise InvalidRequest(f"trace setting '{name}' is set at start ({flag}); it cannot be updated")
    if name not in KNOWN:
        raise InvalidRequest(f"unknown trace setting '{name[:64]}'; the settings: {', '.join(KNOWN)}")
    if not values:
        return CLEAR
    if name == LEVEL:
        return _levels(values)
    if len(values) != 1:
        raise InvalidRequest(f"expect only 1 value for '{name}', got {len(values)}")
    if name == MODE:
        if values[0] != OPENTELEMETRY:
            raise InvalidRequest(
                f"trace_mode '{values[0][:64]}' is not available: spans are made with OpenTelemetry "
                f"only ('{OPENTELEMETRY}')"
            )
        return values[0]
    low, high = {RATE: (1, UINT32_MAX), COUNT: (-1, INT32_MAX), LOG_FREQUENCY: (0, UINT32_MAX)}[name]
    return _whole(name, values[0], low, high)


def _levels(values: list[str]) -> tuple[str, ...]:
    for value in values:
        if value != OFF and value not in LEVELS:
            raise InvalidRequest(
                f"Unable to parse 'trace_level', got: '{value[:64]}'; expected OFF, TIMESTAMPS or TENSORS"
            )
    if OFF in values:
        if any(v != OFF for v in values):
            raise InvalidRequest("Expect only one trace level 'OFF' is specified; OFF goes alone")
        return (OFF,)
    return tuple(level for level in LEVELS if level in values)


def _whole(name: str, text: str, low: int, high: int) -> int:
    stripped = text[1:] if text.startswith("-") else text
    # ASCII digits only: int() takes "+5", " 5", "5_0" and other scripts' digits.
    if not stripped or not (stripped.isascii() and stripped.isdigit()) or len(stripped) > 12:
        number = None
    else:
        number = int(text)
    if number is None or not low <= number <= high:
        raise InvalidRequest(
            f"Unable to parse '{name}', got: '{text[:64]}'; expected a whole number from {low} to {high}"
        )
    return number
