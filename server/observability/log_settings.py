"""Triton's log settings (the LogSettings RPC), mapped onto the process's Python logging.

    log_info, log_warning, log_error  bool: whether lines of that severity are written
                                      (CRITICAL goes with log_error)
    log_verbose_level                 uint32: above 0, DEBUG lines are written too (Python
                                      logging has one debug level: 1 and 5 write the same)
    log_format                        "default" or "ISO8601": the time of text lines; JSON lines
                                      (--log-format json) always carry ISO 8601 (UTC) and say so
    log_file                          "" (stderr); set at start, never through the RPC

The start's `log_level` sets the first values (INFO: info, warning and error on, verbose 0).
The root logger's level is the lowest severity on; a filter on its handlers drops a severity
switched off between two that are on (warning off, info and error on). Every change of a call
is checked before any applies.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

from server.errors import InvalidRequest, Unsupported
from server.observability.logs import TextFormatter

INFO, WARNING, ERROR, VERBOSE, FORMAT, FILE = (
    "log_info",
    "log_warning",
    "log_error",
    "log_verbose_level",
    "log_format",
    "log_file",
)
KNOWN = (FILE, INFO, WARNING, ERROR, VERBOSE, FORMAT)
FORMATS = ("default", "ISO8601")
UINT32_MAX = 2**32 - 1
# The wire's typed value: which of bool_param, uint32_param, string_param was set (None: none).
Kind = Literal["bool", "uint32", "string"] | None
Typed = tuple[Kind, bool | int | str | None]
Setting = bool | int | str
_EXPECTED: dict[str, Kind] = {
    INFO: "bool",
    WARNING: "bool",
    ERROR: "bool",
    VERBOSE: "uint32",
    FORMAT: "string",
}
_WORDS = {"bool": "boolean", "uint32": "uint32", "string": "string"}


class _Severities(logging.Filter):
    """Drops records of a severity switched off (the root's level only sets the lowest one on)."""

    def __init__(self, settings: LogSettings) -> None:
        super().__init__()
        self._settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        return self._settings.writes(record.levelno)


class LogSettings:
    """The log settings of one server process, applied to `root` (the root logger by default)."""

    def __init__(self, level: str, *, json_lines: bool, root: logging.Logger | None = None) -> None:
        start: int = logging.getLevelName(level)  # a number for a level's name
        self.info = start <= logging.INFO
        self.warning = start <= logging.WARNING
        self.error = True
        self.verbose = 1 if start <= logging.DEBUG else 0
        self.iso8601 = json_lines  # JSON lines' time is ISO 8601 whatever the setting
        self._json_lines = json_lines
        self._root = root if root is not None else logging.getLogger()
        self._filter = _Severities(self)

    def view(self) -> dict[str, Setting]:
        return {
            FILE: "",
            INFO: self.info,
            WARNING: self.warning,
            ERROR: self.error,
            VERBOSE: self.verbose,
            FORMAT: FORMATS[1] if self.iso8601 else FORMATS[0],
        }

    def update(self, settings: Mapping[str, Typed]) -> None:
        """Apply one call's changes, all or none, to the logger and its handlers."""
        changes = {name: self._parse(name, kind, value) for name, (kind, value) in settings.items()}
        for name, value in changes.items():
            if name == VERBOSE:
                assert isinstance(value, int)
                self.verbose = value
            elif name == FORMAT:
                self.iso8601 = value == FORMATS[1]
            else:
                setattr(self, name.removeprefix("log_"), bool(value))
        self.apply()

    def apply(self) -> None:
        """The root logger's level, the severity filter on its handlers, text lines' time."""
        on = [
            lvl
            for lvl, wanted in (
                (logging.DEBUG, self.verbose > 0),
                (logging.INFO, self.info),
                (logging.WARNING, self.warning),
                (logging.ERROR, self.error),
            )
            if wanted
        ]
        self._root.setLevel(on[0] if on else logging.CRITICAL + 1)
        for handler in self._root.handlers:
            if self._filter not in handler.filters:
                handler.addFilter(self._filter)
            if isinstance(handler.formatter, TextFormatter):
                handler.formatter.iso8601 = self.iso8601

    def writes(self, levelno: int) -> bool:
        if levelno >= logging.ERROR:
            return self.error
        if levelno >= logging.WARNING:
            return self.warning
        if levelno >= logging.INFO:
            return self.info
        return self.verbose > 0

    def _parse(self, name: str, kind: Kind, value: bool | int | str | None) -> Setting:
        if name == FILE:
            raise Unsupported(
                "log file location can not be updated through network protocol; the server logs "
                "to stderr (redirect it, or collect the container's output)"
            )
        if name not in _EXPECTED:
            raise InvalidRequest(f"unknown log setting '{name[:64]}'; the settings: {', '.join(KNOWN)}")
        expected = _EXPECTED[name]
        if kind != expected or value is None:
            got = "no value" if kind is None else f"a {_WORDS[kind]}"
            raise InvalidRequest(f"expect {_WORDS[str(expected)]} for '{name}', got {got}")
        if name == VERBOSE:
            assert isinstance(value, int)
            if not 0 <= value <= UINT32_MAX:
                raise InvalidRequest(f"expect uint32 for '{name}', got {value}")
        if name == FORMAT:
            if value not in FORMATS:
                raise InvalidRequest(
                    f"invalid argument for log_format, got: '{str(value)[:64]}'; "
                    "expected 'default' or 'ISO8601'"
                )
            if self._json_lines and value != FORMATS[1]:
                raise InvalidRequest(
                    "log_format 'default' does not apply: log lines are JSON (--log-format json), "
                    "whose time is always ISO 8601"
                )
        return value
