"""Files a model's config names (labels, warm-up data, initial states, a drift reference), found and
read under one rule: a regular file inside the model directory, its size checked before it is read.

A config can come from a client (RepositoryModelLoad's `config` parameter): an absolute
`initial_state.data_file` had the server read any file it could open and answer its bytes to the
caller, and a FIFO named as warm-up data froze the event loop until someone wrote to it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from server.models.config_errors import ConfigError


def model_file(directory: Path, relative: str, where: str) -> Path:
    """`relative` under the model `directory`, resolved; ConfigError (`where` names the field and the
    value) when it leads outside the directory (an absolute path, '..', a symlink) or is not a
    regular file (a directory, a FIFO, a device)."""
    if "\0" in relative:  # the OS refuses it with a ValueError, not a ConfigError
        raise ConfigError(f"{where} is not a file name (it holds a NUL character)")
    root = directory.resolve()
    path = (directory / relative).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"{where} is outside the model directory")
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise ConfigError(f"{where} cannot be read: {err.strerror or err}") from err  # errors.load_failure
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{where} is not a regular file")
    return path


def read_model_file(
    directory: Path, relative: str, where: str, max_bytes: int, expected_bytes: int | None = None
) -> bytes:
    """The bytes of `model_file(directory, relative, where)`: at most `max_bytes`, and exactly
    `expected_bytes` when given (checked on the size before reading, and again on what was read)."""
    path = model_file(directory, relative, where)
    try:
        # O_NONBLOCK: a FIFO swapped in after the check above cannot block the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as file:
            opened = os.fstat(file.fileno())
            if not stat.S_ISREG(opened.st_mode):
                raise ConfigError(f"{where} is not a regular file")
            if not _opened_inside(file.fileno(), directory.resolve()):  # a parent swapped for a link
                raise ConfigError(f"{where} is outside the model directory")
            _check_size(opened.st_size, where, max_bytes, expected_bytes)
            data = file.read(max_bytes + 1)  # it may have grown since
    except OSError as err:
        raise ConfigError(f"{where} cannot be read: {err.strerror or err}") from err  # errors.load_failure
    _check_size(len(data), where, max_bytes, expected_bytes)
    return data


def _check_size(size: int, where: str, max_bytes: int, expected_bytes: int | None) -> None:
    if expected_bytes is not None and size != expected_bytes:
        raise ConfigError(f"{where} has {size} bytes, expected {expected_bytes}")
    if size > max_bytes:
        raise ConfigError(f"{where} is larger than {max_bytes} bytes")


def _opened_inside(fd: int, root: Path) -> bool:
    """Whether the file open on `fd` is inside `root`, by the kernel's own path of it (Linux's
    /proc): the path was checked before it was opened, and a parent directory replaced by a
    symlink in between would lead out. True where /proc cannot say."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(root)
    except OSError:
        return True
