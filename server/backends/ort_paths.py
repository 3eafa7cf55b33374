"""A path onnxruntime can open for a model file whose path is not UTF-8.

onnxruntime takes paths as UTF-8 strings (its pybind layer): a model under a directory whose name
holds a byte that is not UTF-8 (which Python keeps as a surrogate, `\\udcff`) failed to load with
pybind's "__init__(): incompatible constructor arguments", while an identity model beside it,
read by Python, loaded. On Linux the model's directory, opened (O_PATH), is reachable as
/proc/self/fd/N, a UTF-8 path to the same directory: the model file loads from there, and so do
external data files beside it, which onnxruntime finds relative to the model's path (or the
folder named in the session's options). Where that cannot be had, the path is refused by name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

PROC_FDS = Path("/proc/self/fd")


class NotUtf8Path(Exception):
    """The model's path is not UTF-8 and no UTF-8 path to it can be made here."""


@contextlib.contextmanager
def onnxruntime_path(path: Path) -> Iterator[Path]:
    """`path`, or a UTF-8 path to the same file while the context lasts (the directory's descriptor
    is closed at its end: onnxruntime has read the model, and its external data, by then);
    NotUtf8Path where neither can be had."""
    if _utf8(str(path)):
        yield path
        return
    proc_fds = PROC_FDS
    where = _first_bad_part(path)
    if not _utf8(path.name):
        raise NotUtf8Path(f"its file name {where} is not UTF-8, and onnxruntime takes UTF-8 paths only")
    if not hasattr(os, "O_PATH") or not proc_fds.is_dir():
        raise NotUtf8Path(
            f"its directory {where} is not UTF-8, onnxruntime takes UTF-8 paths only, and there is no "
            f"{proc_fds} to reach it by: rename the directory"
        )
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield proc_fds / str(fd) / path.name
    finally:
        os.close(fd)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a surrogate: a byte the file system name held that is not UTF-8
        return False
    return True


def _first_bad_part(path: Path) -> str:
    """The first part of `path` that is not UTF-8, its bytes shown as escapes."""
    part = next((part for part in path.parts if not _utf8(part)), str(path))
    return repr(os.fsencode(part))[1:]
