"""Under `--log-format json` (the images set SLUICEWAY_LOG_FORMAT=json) the `sluiceway metrics on`
and `sluiceway ready on` lines are JSON objects too, with the same text as their message: they had
been the only plain lines among the JSON ones, which a log pipeline reading JSON choked on. The
tools that wait for them search the raw line, which still holds the text; `--workers` reads its
workers' ready lines in either form."""

from __future__ import annotations

import json

from server.announce import announcement, message_of
from server.workers import _READY
from tests.support.server_process import ServerProcess

READY = "sluiceway ready on 127.0.0.1:8001 (models: mlp, resnet (v2))"


def test_the_ready_and_metrics_lines_are_json_objects() -> None:
    with ServerProcess("--log-format", "json") as server:
        assert server.port and server.metrics_port  # found in the JSON lines
    assert server.process is not None and server.process.returncode == 0, server.output()[-3000:]
    records = [json.loads(line) for line in server.lines if line.strip()]  # every line is JSON
    messages = [record["message"] for record in records]
    ready = [m for m in messages if m.startswith(f"sluiceway ready on 127.0.0.1:{server.port} (models: ")]
    metrics = [m for m in messages if m == f"sluiceway metrics on 127.0.0.1:{server.metrics_port}/metrics"]
    listening = [
        m for m in messages if m == f"sluiceway listening on 127.0.0.1:{server.port} (loading models)"
    ]
    assert len(ready) == len(metrics) == len(listening) == 1, messages
    assert messages.index(listening[0]) < messages.index(ready[0])  # printed before the models load


def test_a_plain_line_stays_plain_and_both_forms_read_back() -> None:
    assert announcement(READY, json_lines=False) == READY
    line = announcement(READY, json_lines=True)
    assert json.loads(line)["level"] == "INFO" and READY in line  # a grep still finds it
    for form in (READY, line):
        match = _READY.search(message_of(form))  # as `--workers` reads its workers' lines
        assert match is not None and match.groups() == ("8001", "mlp, resnet (v2)")
