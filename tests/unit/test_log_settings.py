"""Triton's log settings rules (server/observability/log_settings.py), on a logger of the test's
own: the values from log_level, the typed checks, and which severities are written."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from server.errors import InvalidRequest, Unsupported
from server.observability.log_settings import LogSettings
from server.observability.logs import TEXT_FORMAT, TextFormatter


@pytest.fixture
def alone() -> Iterator[logging.Logger]:
    """A logger of the test's own: it stands for the server's root logger. It propagates, so the
    test runner attaches no handler of its own to it (it does to loggers that do not)."""
    named = logging.getLogger("test_log_settings.alone")
    kept = (named.handlers[:], named.filters[:], named.level)
    named.handlers = []
    named.setLevel(logging.INFO)
    yield named
    named.handlers, named.filters = kept[0], kept[1]
    named.setLevel(kept[2])


@pytest.fixture
def logger(alone: logging.Logger) -> tuple[logging.Logger, io.StringIO]:
    """That logger with one text handler."""
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(TextFormatter(TEXT_FORMAT))
    alone.addHandler(handler)
    return alone, written


def lines(logger: logging.Logger, written: io.StringIO) -> list[str]:
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        logger.log(level, "line at %s", logging.getLevelName(level))
    said = [line.rsplit(" ", 1)[-1] for line in written.getvalue().splitlines()]
    written.truncate(0)
    written.seek(0)
    return said


def test_the_values_from_the_start_log_level() -> None:
    assert LogSettings("INFO", json_lines=False).view() == {
        "log_file": "",
        "log_info": True,
        "log_warning": True,
        "log_error": True,
        "log_verbose_level": 0,
        "log_format": "default",
    }
    debug = LogSettings("DEBUG", json_lines=True).view()
    assert debug["log_verbose_level"] == 1 and debug["log_format"] == "ISO8601"
    error = LogSettings("ERROR", json_lines=False).view()
    assert (error["log_info"], error["log_warning"], error["log_error"]) == (False, False, True)


def test_each_severity_is_switched_on_and_off(logger: tuple[logging.Logger, io.StringIO]) -> None:
    named, written = logger
    settings = LogSettings("INFO", json_lines=False, root=named)
    assert lines(named, written) == ["INFO", "WARNING", "ERROR", "CRITICAL"]
    settings.update({"log_warning": ("bool", False)})  # between two that are on: filtered
    assert lines(named, written) == ["INFO", "ERROR", "CRITICAL"]
    settings.update({"log_verbose_level": ("uint32", 2), "log_error": ("bool", False)})
    assert lines(named, written) == ["DEBUG", "INFO"]
    settings.update({"log_verbose_level": ("uint32", 0), "log_info": ("bool", False)})
    assert lines(named, written) == [] and named.level > logging.CRITICAL
    settings.update({"log_error": ("bool", True)})
    assert lines(named, written) == ["ERROR", "CRITICAL"] and named.level == logging.ERROR


def test_iso8601_times_text_lines_in_utc(logger: tuple[logging.Logger, io.StringIO]) -> None:
    named, written = logger
    settings = LogSettings("INFO", json_lines=False, root=named)
    settings.update({"log_format": ("string", "ISO8601")})
    named.info("now")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO ", written.getvalue())
    assert settings.view()["log_format"] == "ISO8601"
    settings.update({"log_format": ("string", "default")})
    named.info("again")
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", written.getvalue().splitlines()[1])


@pytest.mark.parametrize(
    ("name", "typed", "says"),
    [
        ("log_info", ("uint32", 1), "expect boolean for 'log_info', got a uint32"),
        ("log_warning", (None, None), "expect boolean for 'log_warning', got no value"),
        ("log_error", ("string", "true"), "expect boolean for 'log_error', got a string"),
        ("log_verbose_level", ("bool", True), "expect uint32 for 'log_verbose_level', got a boolean"),
        ("log_format", ("uint32", 1), "expect string for 'log_format'"),
        ("log_format", ("string", "xml"), "invalid argument for log_format, got: 'xml'"),
        ("log_warnings", ("bool", True), "unknown log setting 'log_warnings'"),
    ],
)
def test_a_wrong_type_or_value_is_invalid_argument_naming_the_setting(
    name: str, typed: tuple[str | None, object], says: str, alone: logging.Logger
) -> None:
    settings = LogSettings("INFO", json_lines=False, root=alone)
    before = settings.view()
    with pytest.raises(InvalidRequest) as refused:
        settings.update({"log_info": ("bool", False), name: typed})  # type: ignore[dict-item]
    assert says in str(refused.value)
    assert settings.view() == before  # all or none


def test_log_file_is_refused_in_tritons_words(alone: logging.Logger) -> None:
    settings = LogSettings("INFO", json_lines=False, root=alone)
    with pytest.raises(Unsupported, match=r"^log file location can not be updated through network protocol"):
        settings.update({"log_file": ("string", "server.log")})


def test_json_lines_keep_iso8601(alone: logging.Logger) -> None:
    settings = LogSettings("INFO", json_lines=True, root=alone)
    settings.update({"log_format": ("string", "ISO8601")})
    with pytest.raises(InvalidRequest, match="log lines are JSON"):
        settings.update({"log_format": ("string", "default")})


def test_grpcs_line_per_rpc_is_left_out_at_debug() -> None:
    # log_verbose_level 1 (DEBUG) had written grpc's "Loaded running loop" line for every RPC.
    import logging

    from server.observability.logs import GRPC_CYTHON_LOGGER, configure_logging

    configure_logging("INFO", "text")
    assert not logging.getLogger(GRPC_CYTHON_LOGGER).isEnabledFor(logging.DEBUG)
