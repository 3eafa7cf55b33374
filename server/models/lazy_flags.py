"""A model's `lazy_load` and `pinned` parameters (config.pbtxt), read and checked."""

from __future__ import annotations

from protos import model_config_pb2 as mc
from server.models.config import ConfigError

LAZY_LOAD = "lazy_load"
PINNED = "pinned"
_BOOLEANS = {"true": True, "false": False}


def _flag(config: mc.ModelConfig, key: str, source: str) -> bool:
    if key not in config.parameters:
        return False
    value = config.parameters[key].string_value
    if value.lower() not in _BOOLEANS:
        raise ConfigError(f"{source}: parameters '{key}' must be 'true' or 'false', got '{value[:32]}'")
    return _BOOLEANS[value.lower()]


def lazy_flags(config: mc.ModelConfig, source: str) -> tuple[bool, bool]:
    """(lazy, pinned) from a model's parameters; a model that is not lazy is always pinned."""
    lazy = _flag(config, LAZY_LOAD, source)
    return lazy, (not lazy) or _flag(config, PINNED, source)
