"""The test command's scheduling: which once-per-command checks a run takes (tests/support/once.py,
from SLUICEWAY_TEST_ONCE), and the long files put first (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LONG_FILES
from tests.support.once import ENV, EXTRAS_RESOLVE, GPU_DRY_RUN, once_per_command

REPO = Path(__file__).resolve().parents[2]


def skipped(name: str) -> bool:
    mark = once_per_command(name).mark
    assert mark.name == "skipif"
    return bool(mark.args[0])


def test_a_run_by_hand_takes_every_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert not skipped(GPU_DRY_RUN) and not skipped(EXTRAS_RESOLVE)


@pytest.mark.parametrize(
    ("chosen", "gpu", "extras"),
    [
        ("extras-resolve,", True, False),
        ("gpu-dry-run,", False, True),
        ("extras-resolve,gpu-dry-run,", False, False),
        ("", True, True),
    ],
)
def test_a_run_takes_only_the_checks_named(
    monkeypatch: pytest.MonkeyPatch, chosen: str, gpu: bool, extras: bool
) -> None:
    monkeypatch.setenv(ENV, chosen)
    assert skipped(GPU_DRY_RUN) is gpu
    assert skipped(EXTRAS_RESOLVE) is extras
    if gpu:
        assert chosen in once_per_command(GPU_DRY_RUN).mark.kwargs["reason"]


def test_every_long_file_named_first_exists() -> None:
    # A renamed file would silently lose its place at the front of the parallel phase.
    missing = [name for name in LONG_FILES if not (REPO / name).is_file()]
    assert missing == []
