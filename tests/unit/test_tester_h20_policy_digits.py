"""Traffic-policy numbers refuse non-ASCII digits, as they refuse digit separators: float() and
int() read fullwidth '10' (U+FF11 U+FF10) and Arabic-Indic '30' (U+0663 '0') as 10 and 30, and
the policy loaded with them (traffic_weights already refused them)."""

from __future__ import annotations

import pytest

from server.models.config import ConfigError
from server.models.traffic import parse_policy
from tests.unit.test_rollout_policy import config


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("rollback_min_requests", "\uff11\uff10"),
        ("rollback_min_requests", "\u06630"),
        ("rollback_latency_floor_ms", "\uff12000"),
    ],
)
def test_a_policy_number_with_non_ascii_digits_is_refused_naming_it(key: str, text: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}' must be a .* got '{text}'"):
        parse_policy(config(**{key: text}), "models/m/config.pbtxt", [1, 2])


def test_ascii_numbers_still_parse() -> None:
    assert parse_policy(config(rollback_min_requests="10", rollback_window_s="1e1"), "m", [1, 2]) is not None
