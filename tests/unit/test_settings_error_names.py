"""A settings error at start-up names the setting, or says it is about several: a rule over two
settings (a model validator, with no field of its own) printed `invalid setting '':`. Exit 2."""

from __future__ import annotations

import json

import pytest

from server.cli import main
from tests.unit.test_settings_flags import clean_environment

__all__ = ["clean_environment"]  # autouse: no SLUICEWAY_* leaks in, and nothing starts


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--workers", "2", "--model-control-mode", "explicit"), "invalid settings: "),
        (
            (
                "--workers",
                "0",
            ),
            "invalid setting 'workers': ",
        ),
    ],
)
def test_a_settings_error_names_what_it_is_about(
    capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], named: str
) -> None:
    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "''" not in err, err


def test_a_rule_over_two_settings_names_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", "2", "--model-control-mode", "explicit", "--log-format", "json"]) == 2
    record = json.loads(capsys.readouterr().err)
    assert record["level"] == "ERROR"
    assert record["message"].startswith("invalid settings: "), record
    assert "model_control_mode" in record["message"] and "workers" in record["message"]
