"""server/malloc_arenas.py: glibc's arenas bounded at start-up (mallopt), unless told not to."""

from __future__ import annotations

import pytest

from server.malloc_arenas import bound_malloc_arenas


def test_zero_leaves_glibcs_default_and_the_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert bound_malloc_arenas(0) is False
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # glibc read it at start: not overridden
    assert bound_malloc_arenas(2) is False


def test_a_bound_is_applied_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert bound_malloc_arenas(8) is True  # this machine's libc is glibc (Debian)
