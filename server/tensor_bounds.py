"""Bounds on the shape of any one tensor, shared by request decoding (server/protocol/codec.py) and
model configs (server/models/config_bounds.py), which must not declare what no request may send."""

from __future__ import annotations

# Most elements one tensor's shape may describe: far beyond any message, well within numpy's sizes.
MAX_ELEMENTS = 2**40
# Most dimensions one tensor may have: numpy 1.x describes 32 (2.x: 64).
MAX_DIMS = 32
