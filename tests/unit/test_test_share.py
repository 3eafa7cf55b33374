"""The test command's shares (tests/support/share.py): across the Pythons' runs every test file
runs at least once, the unit tests and BOTH_PYTHONS on each, every other file on exactly one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.share import BOTH_PYTHONS, kept, parse_share, share_of

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py"))


def test_every_file_in_both_pythons_exists() -> None:
    assert not BOTH_PYTHONS - set(FILES), sorted(BOTH_PYTHONS - set(FILES))


@pytest.mark.parametrize("count", [1, 2, 3])
def test_every_file_runs_once_and_the_shared_on_each(count: int) -> None:
    runs = {path: [i for i in range(count) if kept(path, (i, count))] for path in FILES}
    for path, shares in runs.items():
        on_each = path.startswith("tests/unit/") or path in BOTH_PYTHONS
        assert shares == (list(range(count)) if on_each else [share_of(path, count)]), path


def test_two_shares_split_the_other_files_both_ways() -> None:
    others = [path for path in FILES if not path.startswith("tests/unit/") and path not in BOTH_PYTHONS]
    counts = [sum(share_of(path, 2) == i for path in others) for i in range(2)]
    assert min(counts) >= len(others) // 3, counts  # crc32 spreads them; neither share is empty


@pytest.mark.parametrize("value", ["", "1", "2/2", "-1/2", "a/b", "0/0", "1/"])
def test_a_malformed_share_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="SLUICEWAY_TEST_SHARE must be i/n"):
        parse_share(value)


def test_a_share_reads_as_index_and_count() -> None:
    assert parse_share("1/2") == (1, 2)
