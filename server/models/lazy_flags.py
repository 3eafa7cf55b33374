"""A model's `lazy_load` and `pinned` parameters (config.pbtxt), read and checked."""

from __future__ import annotations

from protos import model_config_pb2 as mc
from server.models.config import bool_parameter

LAZY_LOAD = "lazy_load"
PINNED = "pinned"


def lazy_flags(config: mc.ModelConfig, source: str) -> tuple[bool, bool]:
    """(lazy, pinned) from a model's parameters; a model that is not lazy is always pinned."""
    lazy = bool_parameter(config, LAZY_LOAD, source)
    return lazy, (not lazy) or bool_parameter(config, PINNED, source)
