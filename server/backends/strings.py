"""String tensors between the wire and onnxruntime: the wire carries bytes, onnxruntime's string
tensors take and give str (bytes handed to it would be str()-ed)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from batcher.types import Array


def _to_str(item: Any) -> str:
    return item if isinstance(item, str) else bytes(item).decode("utf-8")


def decode_string_inputs(inputs: Mapping[str, Array], names: Collection[str]) -> Mapping[str, Array]:
    """`inputs` with those `names` decoded (decode_strings); the same mapping when there are none,
    so a batch not yet gathered (batcher Gathered) stays so for the runner that gathers it."""
    if not names:
        return inputs
    return {name: decode_strings(name, a) if name in names else a for name, a in inputs.items()}


def as_dict(feed: Mapping[str, Array]) -> dict[str, Array]:
    """`feed` as session.run takes it (a dict): a Gathered batch joined, a dict as it is (no copy
    per batch on the CPU's path)."""
    return feed if isinstance(feed, dict) else dict(feed)


def decode_strings(name: str, array: Array) -> Array:
    # The wire carries bytes; onnxruntime string tensors take str (bytes would be str()-ed).
    out = np.empty(array.shape, dtype=object)
    try:
        out.reshape(-1)[:] = [_to_str(x) for x in array.reshape(-1)]
    except UnicodeDecodeError:
        raise ValueError(f"BYTES input '{name}' is not UTF-8 text, which onnxruntime strings need") from None
    return out


def encode_strings(array: Array) -> Array:
    out = np.empty(array.shape, dtype=object)
    out.reshape(-1)[:] = [x.encode("utf-8") if isinstance(x, str) else x for x in array.reshape(-1)]
    return out
