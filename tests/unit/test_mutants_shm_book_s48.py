"""Mutants of server/protocol/shm_book.py that survived the whole-scope run of 2026-12-05
(tests/MUTANTS.md, forty-eighth session): an Unregister that reads no entry, an entry file that
holds another name's registration, and close while a reader has the counter's mapping exported.
The book over a temporary share directory; entries written whole (no objects are opened)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from server.protocol.shm_book import Entry, system_book


def entry(name: str, entry_id: str = "e1") -> Entry:
    return Entry(name, "/o", 0, 64, 64, entry_id, os.getpid(), 3, 1, 2)


def test_removing_a_name_reads_no_entry_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An Unregister (no `only_id`) only unlinks: it reads no entry, so it still works with the
    process out of descriptors (and frees them). The mutant read the name's entry anyway, and an
    out-of-descriptors read then refused the Unregister."""
    book = system_book(tmp_path)
    book.add(entry("r"), 8, 1 << 20)
    before = book.generation()

    def no_descriptor(*args: object, **kwargs: object) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Path, "read_text", no_descriptor)
    book.remove("r")
    monkeypatch.undo()
    assert book.get("r") is None and book.generation() == before + 1
    book.close()


def digest_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def test_an_entry_file_holding_another_names_registration_is_not_the_names(tmp_path: Path) -> None:
    """A name's file is found by a hash of the name: what it holds counts only if it is that name's
    (a collision, or a file put there otherwise, is not a registration of the name)."""
    book = system_book(tmp_path)
    book.add(entry("b"), 8, 1 << 20)
    os.replace(tmp_path / "shm" / f"region-{digest_of('b')}", tmp_path / "shm" / f"region-{digest_of('a')}")
    assert book.get("a") is None
    assert [e.name for e in book.entries()] == ["b"]  # (the entry itself is still read as b's)
    book.close()


def test_close_while_a_reader_has_the_counter_exported_does_not_raise(tmp_path: Path) -> None:
    """A worker's close can meet a request thread reading the counter (its mapping exported for the
    read): the close is skipped, not raised. The mutant's `suppress(None)` turned the BufferError
    into a TypeError out of close."""
    book = system_book(tmp_path)
    reading = memoryview(book._counter)  # a read in progress on another thread
    book.close()
    assert book.generation() == 0  # still mapped
    reading.release()
    book.close()
    with pytest.raises(ValueError, match="closed"):
        book.generation()
