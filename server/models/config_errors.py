"""The one error of model configuration, in its own module so that every config module can raise it."""

from __future__ import annotations


class ConfigError(Exception):
    """A model configuration that cannot be served; the message names the source and the field."""
