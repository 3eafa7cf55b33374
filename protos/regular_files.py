"""Reading a file an operator names (a setting, a flag): a regular file, its size checked before it
is read (hand-written).

A FIFO had blocked start-up for good (its open and read wait for a writer) and /dev/zero, or a
file of hundreds of MB, had grown memory until MemoryError. config.pbtxt, the server's TLS and
tokens files, and the clients' CA, certificate, key and token files are read here, under one
rule. It lives in protos, the one package the server, the clients and the load test all import
(`sluiceway serve` imports nothing of clients, clients nothing of the server), and it needs only
the standard library.
"""

from __future__ import annotations

import os
import stat

# A PEM file (a certificate chain, a key, a CA bundle): kilobytes; a system's whole CA bundle is
# about 200 KiB.
MAX_PEM_FILE_BYTES = 1 << 20


class RefusedFile(ValueError):
    """Not a regular file, or larger than its bound; the message says which (the caller names the
    setting or flag, and the path)."""


class NotRegularFile(RefusedFile):
    """A FIFO, a device, a socket or a directory."""


class FileTooLarge(RefusedFile):
    """Larger than the bound its reader set."""


def read_regular_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of the regular file at `path` (a symlink is followed), at most `max_bytes`.

    NotRegularFile when it is something else (a FIFO, a device, a socket, a directory) and
    FileTooLarge when it is larger, found before anything is read; OSError when it cannot be
    opened or read.
    """
    refuse_special(os.stat(path).st_mode)  # a socket cannot even be opened: named here
    # O_NONBLOCK: a FIFO put there since the check cannot block the open (regular files ignore it).
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        opened = os.fstat(file.fileno())
        refuse_special(opened.st_mode)
        _check_size(opened.st_size, max_bytes)
        data = file.read(max_bytes + 1)  # it may have grown since fstat
    _check_size(len(data), max_bytes)
    return data


def read_or_refuse(
    path: str | os.PathLike[str],
    max_bytes: int,
    what: str,
    label: str = "",
    error: type[ValueError] = ValueError,
) -> bytes:
    """`read_regular_file`, its refusals and OSError as one `error` line naming the file (after
    `label`, a setting's or flag's name, when given) and, past the bound, `what` it is for ("a
    PEM file"): the server's and the clients' readers of such files say it alike."""
    named = f"{label} {path}" if label else str(path)
    try:
        return read_regular_file(path, max_bytes)
    except NotRegularFile as exc:
        raise error(f"{named}: {exc}") from None
    except FileTooLarge as exc:
        raise error(f"{named}: {exc}, the limit for {what}") from None
    except OSError as exc:
        raise error(f"{label + ': ' if label else ''}cannot read {path}: {exc.strerror or exc}") from None


def refuse_special(mode: int) -> None:
    """NotRegularFile unless `mode` (a stat's st_mode) is a regular file's."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        kind = "a directory"
    elif stat.S_ISFIFO(mode):
        kind = "a FIFO"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    else:
        kind = "a device"
    raise NotRegularFile(f"not a regular file ({kind})")


def size_limit(max_bytes: int) -> str:
    """'1048576 bytes (1 MiB)': the exact bound, and its MiB or KiB when it is a whole number of them."""
    for unit, name in ((1 << 20, "MiB"), (1 << 10, "KiB")):
        if max_bytes >= unit and max_bytes % unit == 0:
            return f"{max_bytes} bytes ({max_bytes // unit} {name})"
    return f"{max_bytes} bytes"


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise FileTooLarge(f"larger than {size_limit(max_bytes)}")
