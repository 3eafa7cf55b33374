"""How many bytes a loaded model holds: its files, and the process's resident growth over its load.

onnxruntime copies the weights into its own buffers and its CPU arena grows on the first runs
(the warm-up runs, when the config has model_warmup), so the resident-set growth measured around
load + warm-up covers weights, arena and session state. It is an estimate: allocations of other
work during the load count too, and memory the allocator freed and reused does not, so the model
files' size is taken as the floor.
"""

from __future__ import annotations

import os
from pathlib import Path

from server.models.repository import ModelSource

_STATM = Path("/proc/self/statm")


def rss_bytes() -> int:
    """This process's resident set now (0 where /proc is missing: only file sizes count then)."""
    try:
        resident_pages = int(_STATM.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def files_bytes(source: ModelSource) -> int:
    """Bytes of every file in the selected version directories (model files, external weights)."""
    total = 0
    for model_file in source.versions.values():
        if model_file.is_dir():  # an ensemble's or identity model's version: no model file
            version_dir = model_file
        elif model_file.parent.name.isdigit():
            version_dir = model_file.parent
        elif model_file.parent.parent.name.isdigit():  # <version>/model.onnx/model.onnx: a directory
            version_dir = model_file.parent.parent
        else:  # never walk a tree that is not a version directory
            total += model_file.stat().st_size
            continue
        for path in version_dir.rglob("*"):
            if path.is_file():
                total += path.stat().st_size
    return total


def footprint(files: int, rss_before: int, rss_after: int) -> int:
    """A model's estimated bytes: resident growth over its load, at least its files' size."""
    return max(files, rss_after - rss_before)
