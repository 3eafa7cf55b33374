"""Reading the small JSON files of the `--workers` share directory (operator changes,
rollout_ops.py; the log's snapshot, rollout_snapshot.py): read with a bound, then checked field by
field, so a file another process wrote wrongly (or half of one) is a ValueError naming the field,
never a state applied from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def read_json_object(path: Path, max_bytes: int) -> dict[str, object]:
    """The JSON object in `path`, read up to `max_bytes`; ValueError when it is larger or not an
    object; FileNotFoundError (or another OSError) when it cannot be read."""
    with path.open("rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    raw = json.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    return raw


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_pair(value: object) -> bool:
    """[version, weight]: two integers."""
    return isinstance(value, list) and len(value) == 2 and all(is_int(x) for x in value)


def field(raw: dict[str, object], name: str, kind: type[T]) -> T:
    """`raw[name]`, of type `kind` (a bool is not an int); ValueError naming the field otherwise."""
    value = raw.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"field '{name}' is not a {kind.__name__}")
    return value
