"""The server's own lines on stdout, which whoever starts it waits for: `sluiceway listening on
HOST:PORT (loading models)` once the endpoint answers (the port `--port 0` chose, before the models
load), `sluiceway metrics on HOST:PORT/metrics`, then `sluiceway ready on HOST:PORT (models: ...)`.
Under JSON logs each is one JSON object (an INFO record, as the logs write one) whose message is
that same text: a collector had choked on the plain lines among the JSON ones, and a search for
"sluiceway ready on" in the raw line still finds it."""

from __future__ import annotations

import json
import logging

from server.observability.logs import JsonFormatter


def announcement(message: str, json_lines: bool) -> str:
    """`message` as the line to print: itself, or an INFO record as one JSON object."""
    if not json_lines:
        return message
    record = logging.makeLogRecord({"name": "sluiceway", "levelname": "INFO", "levelno": logging.INFO})
    record.msg = message
    return JsonFormatter().format(record)


def announce(message: str, json_lines: bool) -> None:
    print(announcement(message, json_lines), flush=True)


def message_of(line: str) -> str:
    """What a line printed by `announce` says, whichever form it took."""
    if line.startswith("{"):
        try:
            entry = json.loads(line)
        except ValueError:
            return line
        message = entry.get("message") if isinstance(entry, dict) else None
        if isinstance(message, str):
            return message
    return line
