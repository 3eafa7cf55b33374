"""A request's `model_version` as a number (server/models/versions.py): int64's bounds, said as such."""

from __future__ import annotations

import pytest

from server.errors import InvalidRequest
from server.models.versions import MAX_VERSION, version_number


@pytest.mark.parametrize("version", ["1", "0", str(MAX_VERSION)])
def test_versions_up_to_int64s_largest_are_numbers(version: str) -> None:
    assert version_number(version) == int(version)


@pytest.mark.parametrize("version", [str(MAX_VERSION + 1), "9999999999999999999"])
def test_nineteen_digits_above_int64_are_not_a_version_number(version: str) -> None:
    # They had passed as numbers: ModelReady answered "not ready", others "not found".
    with pytest.raises(InvalidRequest) as refused:
        version_number(version)
    assert str(refused.value) == (
        f"model_version '{version}' is not a version number (at most {MAX_VERSION}: versions are int64)"
    )


def test_twenty_digits_keep_their_own_message() -> None:
    with pytest.raises(
        InvalidRequest, match=r"\(20 characters\) is not a version number \(at most 19 digits"
    ):
        version_number("1" * 20)
