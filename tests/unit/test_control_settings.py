"""The repository-control and cold-start settings as flags and variables, checked as Triton does."""

from __future__ import annotations

import pytest

from server.cli import main
from tests.unit.test_settings_flags import clean_environment, settings

__all__ = ["clean_environment"]  # autouse: no SLUICEWAY_* leaks in, and nothing starts


def test_load_model_is_repeatable_in_explicit_mode() -> None:
    got = settings("--model-control-mode", "explicit", "--load-model", "a", "--load-model", "b")
    assert got.model_control_mode == "explicit" and got.load_model == ("a", "b")


def test_the_variables_set_them_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEWAY_MODEL_CONTROL_MODE", "poll")
    monkeypatch.setenv("SLUICEWAY_REPOSITORY_POLL_SECS", "2.5")
    monkeypatch.setenv("SLUICEWAY_MODEL_MEMORY_BUDGET_MB", "512")
    got = settings()
    assert (got.model_control_mode, got.repository_poll_secs, got.model_memory_budget_mb) == (
        "poll",
        2.5,
        512,
    )
    assert settings("--model-control-mode", "none").model_control_mode == "none"  # the flag wins


@pytest.mark.parametrize(
    ("flags", "field", "words"),
    [
        (("--load-model", "a"), "load_model", "requires model_control_mode 'explicit'"),
        (("--model-control-mode", "poll", "--load-model", "a"), "load_model", "requires"),
        (
            ("--model-control-mode", "explicit", "--load-model", "*", "--load-model", "a"),
            "load_model",
            "only",
        ),
        (("--model-control-mode", "sometimes"), "model_control_mode", ""),
        (("--repository-poll-secs", "0"), "repository_poll_secs", ""),
        (("--model-memory-budget-mb", "-1"), "model_memory_budget_mb", ""),
    ],
)
def test_bad_values_exit_2_naming_the_setting(
    capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], field: str, words: str
) -> None:
    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    assert f"invalid setting '{field}'" in err and words in err
