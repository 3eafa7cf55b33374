"""String tensors between the wire and onnxruntime: the wire carries bytes, onnxruntime's string
tensors take and give str (bytes handed to it would be str()-ed)."""

from __future__ import annotations

from typing import Any

import numpy as np

from batcher.types import Array


def _to_str(item: Any) -> str:
    return item if isinstance(item, str) else bytes(item).decode("utf-8")


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
