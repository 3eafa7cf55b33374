"""protos/regular_files.py: the one reader of files an operator names (config.pbtxt, the TLS and
tokens files, the clients' PEM and token files): a FIFO, a device, a socket or a directory is
refused before anything is read, and a file over its bound unread."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos.regular_files import (
    MAX_PEM_FILE_BYTES,
    FileTooLarge,
    NotRegularFile,
    read_regular_file,
    size_limit,
)


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "listening.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        yield path


def test_a_regular_file_is_read_whole_and_a_link_to_one_is_followed(tmp_path: Path) -> None:
    (tmp_path / "a.pem").write_bytes(b"x" * 100)
    (tmp_path / "link.pem").symlink_to(tmp_path / "a.pem")
    assert read_regular_file(tmp_path / "a.pem", 100) == b"x" * 100
    assert read_regular_file(str(tmp_path / "link.pem"), 100) == b"x" * 100


def test_special_files_are_refused_naming_their_kind(tmp_path: Path, unix_socket: Path) -> None:
    """A FIFO with no writer had blocked the read for good (returns here at once: nothing writes)."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    kinds = {"fifo": "a FIFO", "zero": "a device", ".": "a directory"}
    for name, kind in kinds.items():
        with pytest.raises(NotRegularFile, match=rf"^not a regular file \({kind}\)$"):
            read_regular_file(tmp_path / name, 1 << 20)
    with pytest.raises(NotRegularFile, match=r"\(a socket\)"):
        read_regular_file(unix_socket, 1 << 20)


def test_a_file_over_its_bound_is_refused_naming_the_bound(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 1025)
    with pytest.raises(FileTooLarge, match=r"^larger than 1024 bytes \(1 KiB\)$"):
        read_regular_file(tmp_path / "big", 1024)


def test_a_missing_file_is_the_os_error() -> None:
    with pytest.raises(FileNotFoundError):
        read_regular_file("/nonexistent/ca.pem", 1024)


def test_size_limit_names_whole_units() -> None:
    assert size_limit(MAX_PEM_FILE_BYTES) == "1048576 bytes (1 MiB)"
    assert size_limit(16 << 20) == "16777216 bytes (16 MiB)"
    assert size_limit(64 << 10) == "65536 bytes (64 KiB)"
    assert size_limit(1000) == "1000 bytes"
