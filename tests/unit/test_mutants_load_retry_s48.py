"""Survivors of the 2026-12-05 mutation run in server/models/load_retry.py: `Retry.note`'s default
cause. The poller passes its cause itself; the default is what any other caller's index reason says,
and an earlier test read only the note's tail ("tries again in ..."), which every mutant kept."""

from __future__ import annotations

from server.models.load_retry import LoadRetries, Retry


def test_the_note_names_an_os_error_by_default() -> None:
    """The whole note: cause, the wait to three significant digits, the attempt to come."""
    assert Retry(1.5, 2).note() == "(an OS error: the poller tries again in 1.5 s, attempt 2)"


def test_a_first_failure_notes_its_second_attempt_with_the_default_cause() -> None:
    retry = LoadRetries(first_s=2.0).failed("m", now=10.0)
    assert retry.note() == "(an OS error: the poller tries again in 2 s, attempt 2)"
    assert retry.note("no room") == "(no room: the poller tries again in 2 s, attempt 2)"
