"""`--log-format json` under a read-only HOME: every log line is JSON. onnxruntime 1.31 started its
telemetry at import and, unable to write its device id under ~/.cache, printed one plain coloured
line ("Failed to persist telemetry device ID"); the server now turns that telemetry off
(`ORT_DISABLE_TELEMETRY=1` unless set). onnxruntime 1.23 (the 3.10 venv) has no such line."""

from __future__ import annotations

import json

import pytest

from tests.support.server_process import ServerProcess


def test_every_line_is_json_when_home_is_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)
    read_only = {"HOME": "/proc", "XDG_CACHE_HOME": "/proc/no-cache"}  # /proc: not even root writes
    with ServerProcess("--log-format", "json", env=read_only) as server:
        pass  # started and stopped
    assert server.process is not None and server.process.returncode == 0, server.output()[-3000:]
    logs = [line for line in server.lines if line.strip()]  # the ready and metrics lines too
    assert logs, server.output()
    for line in logs:
        assert line.startswith("{"), line
        json.loads(line)
