"""The one rule for files a config names (server/models/model_files.py): a regular file inside the
model directory, its size checked before it is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.models.config_errors import ConfigError
from server.models.model_files import model_file, read_model_file


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "m" / "warmup").mkdir(parents=True)
    (tmp_path / "m" / "warmup" / "x.bin").write_bytes(b"\1" * 16)
    (tmp_path / "outside.bin").write_bytes(b"secret-secret-16")
    return tmp_path / "m"


def test_a_file_inside_is_read_with_its_size_checked(model_dir: Path) -> None:
    assert read_model_file(model_dir, "warmup/x.bin", "f", 16, expected_bytes=16) == b"\1" * 16
    with pytest.raises(ConfigError, match=r"^f has 16 bytes, expected 12$"):
        read_model_file(model_dir, "warmup/x.bin", "f", 16, expected_bytes=12)
    with pytest.raises(ConfigError, match=r"^f is larger than 8 bytes$"):
        read_model_file(model_dir, "warmup/x.bin", "f", 8)


@pytest.mark.parametrize("relative", ["../outside.bin", "warmup/../../outside.bin", "link.bin"])
def test_a_path_that_leads_outside_is_refused_before_anything_is_read(model_dir: Path, relative: str) -> None:
    (model_dir / "link.bin").symlink_to(model_dir.parent / "outside.bin")
    with pytest.raises(ConfigError, match=r"^f is outside the model directory$"):
        read_model_file(model_dir, relative, "f", 1 << 20)


def test_a_fifo_a_directory_and_a_missing_file_are_named_without_blocking(model_dir: Path) -> None:
    os.mkfifo(model_dir / "warmup" / "fifo")
    with pytest.raises(ConfigError, match=r"^f is not a regular file$"):
        read_model_file(model_dir, "warmup/fifo", "f", 16)  # opening it would block until a writer came
    with pytest.raises(ConfigError, match=r"^f is not a regular file$"):
        model_file(model_dir, "warmup", "f")
    with pytest.raises(ConfigError, match=r"^f cannot be read: No such file or directory$"):
        model_file(model_dir, "warmup/missing.bin", "f")


def test_a_file_opened_outside_after_its_path_was_checked_is_refused(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path is checked, then opened: a parent directory swapped for a symlink in between led
    out. The opened file's own path is checked too (found by review)."""
    import server.models.model_files as model_files

    real_open = os.open

    def swapped_open(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        return real_open(model_dir.parent / "outside.bin", flags, *args)  # what the swap would open

    monkeypatch.setattr(model_files.os, "open", swapped_open)
    with pytest.raises(ConfigError, match=r"^f is outside the model directory$"):
        read_model_file(model_dir, "warmup/x.bin", "f", 1 << 20)
