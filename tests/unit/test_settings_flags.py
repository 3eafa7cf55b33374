"""`sluiceway serve` settings: SLUICEWAY_* variables, flags winning over them, bad values exiting 2."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from pydantic import ValidationError

import server.app
import server.cli
import server.workers
from server.cli import _parser, main, settings_from_args
from server.settings import ServerSettings, unknown_variables


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SLUICEWAY_* variable from the caller's environment leaks into these tests, and `main`
    never gets as far as building models or serving: where validation wrongly passes, it fails."""
    for name in list(os.environ):
        if name.startswith("SLUICEWAY_"):
            monkeypatch.delenv(name)

    def must_not_start(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("settings were accepted: the server was about to start")

    monkeypatch.setattr(server.app, "serve", must_not_start)
    monkeypatch.setattr(server.workers, "run_workers", must_not_start)
    monkeypatch.setattr(server.cli, "_demo_repository", must_not_start)
    yield


def settings(*flags: str) -> ServerSettings:
    return settings_from_args(_parser().parse_args(["serve", *flags]))


def test_environment_variables_set_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEWAY_MAX_QUEUE_SIZE", "7")
    monkeypatch.setenv("SLUICEWAY_STREAM_MAX_IN_FLIGHT", "3")
    monkeypatch.setenv("SLUICEWAY_IDLE_DISPATCH", "true")
    monkeypatch.setenv("SLUICEWAY_EXECUTION_PROVIDERS", '["CUDAExecutionProvider", "CPUExecutionProvider"]')
    got = settings()
    assert got.max_queue_size == 7 and got.stream_max_in_flight == 3
    assert got.idle_dispatch is True
    assert got.execution_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert got.port == 8001  # untouched settings keep their defaults


def test_flags_win_over_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEWAY_MAX_QUEUE_SIZE", "7")
    monkeypatch.setenv("SLUICEWAY_PORT", "9001")
    monkeypatch.setenv("SLUICEWAY_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("SLUICEWAY_EXECUTION_PROVIDERS", '["CUDAExecutionProvider", "CPUExecutionProvider"]')
    monkeypatch.setenv("SLUICEWAY_WORKERS", "4")
    monkeypatch.setenv("SLUICEWAY_STREAM_MAX_IN_FLIGHT", "3")
    monkeypatch.setenv("SLUICEWAY_MAX_CONCURRENT_RPCS", "10")
    monkeypatch.setenv("SLUICEWAY_SHUTDOWN_GRACE_S", "7.5")
    monkeypatch.setenv("SLUICEWAY_ALLOW_SPINNING", "true")
    got = settings(
        "--max-queue-size", "9", "--port", "0", "--log-level", "ERROR",
        "--execution-providers", "TensorrtExecutionProvider, CPUExecutionProvider",
        "--workers", "2", "--stream-max-in-flight", "2",
        "--max-concurrent-rpcs", "20", "--shutdown-grace-s", "0.5", "--no-allow-spinning",
    )  # fmt: skip
    assert got.max_queue_size == 9
    assert got.port == 0  # a flag of 0 (falsy) still wins
    assert got.log_level == "ERROR"
    assert got.execution_providers == ("TensorrtExecutionProvider", "CPUExecutionProvider")
    assert got.workers == 2
    assert got.stream_max_in_flight == 2 and got.max_concurrent_rpcs == 20
    assert got.shutdown_grace_s == 0.5 and got.allow_spinning is False


@pytest.mark.parametrize("value", ["mlp,resnet", " mlp , resnet ", '["mlp", "resnet"]', ' ["mlp","resnet"]'])
def test_a_list_variable_takes_commas_or_json(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """SLUICEWAY_LOAD_MODEL=mlp was refused: pydantic-settings reads list variables as JSON only."""
    monkeypatch.setenv("SLUICEWAY_MODEL_CONTROL_MODE", "explicit")
    monkeypatch.setenv("SLUICEWAY_LOAD_MODEL", value)
    monkeypatch.setenv("SLUICEWAY_EXECUTION_PROVIDERS", value.replace("mlp", "CUDAExecutionProvider")
                       .replace("resnet", "CPUExecutionProvider"))  # fmt: skip
    got = settings()
    assert got.load_model == ("mlp", "resnet")
    assert got.execution_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_a_single_name_variable_and_bad_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLUICEWAY_MODEL_CONTROL_MODE", "explicit")
    monkeypatch.setenv("SLUICEWAY_LOAD_MODEL", "mlp")
    assert settings().load_model == ("mlp",)
    monkeypatch.setenv("SLUICEWAY_LOAD_MODEL", '["mlp"')
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "load_model" in err and "Traceback" not in err


def test_explicit_mode_needs_one_worker() -> None:
    """A load by RPC reached the one worker its connection landed on (9 of 16 saw the model)."""
    with pytest.raises(ValidationError, match="explicit' needs workers=1"):
        settings("--model-control-mode", "explicit", "--workers", "2")
    assert settings("--model-control-mode", "poll", "--workers", "2").workers == 2


def test_shared_sessions_need_several_workers() -> None:
    """One process holds its sessions already: the flag alone would start no session host."""
    with pytest.raises(ValidationError, match="shared_sessions 'gpu' needs workers > 1"):
        settings("--shared-sessions", "gpu")
    assert settings("--shared-sessions", "gpu", "--workers", "2").shared_sessions == "gpu"
    with pytest.raises(ValidationError, match="shared_sessions"):
        settings("--shared-sessions", "some", "--workers", "2")


def test_a_log_level_is_taken_in_either_case(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings("--log-level", "debug").log_level == "DEBUG"
    monkeypatch.setenv("SLUICEWAY_LOG_LEVEL", "Warning")
    assert settings().log_level == "WARNING"


def test_a_false_flag_wins_over_a_true_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEWAY_IDLE_DISPATCH", "true")
    assert settings("--no-idle-dispatch").idle_dispatch is False
    assert settings().idle_dispatch is True
    monkeypatch.setenv("SLUICEWAY_IDLE_DISPATCH", "false")
    assert settings("--idle-dispatch").idle_dispatch is True


def test_a_flag_replaces_a_bad_variable_of_the_same_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEWAY_MAX_QUEUE_SIZE", "zero")
    assert settings("--max-queue-size", "5").max_queue_size == 5


@pytest.mark.parametrize(
    ("flags", "variables", "field"),
    [
        ((), {"SLUICEWAY_MAX_QUEUE_SIZE": "zero"}, "max_queue_size"),
        ((), {"SLUICEWAY_STREAM_MAX_IN_FLIGHT": "0"}, "stream_max_in_flight"),
        (("--port", "70000"), {}, "port"),
        (("--workers", "0"), {"SLUICEWAY_WORKERS": "2"}, "workers"),  # the flag's value is checked
        (("--log-level", "LOUD"), {}, "log_level"),
        # Past what grpc core and onnxruntime take: they failed with an OverflowError traceback,
        # or grew memory by 70 MB/s and never became ready (100,000 threads).
        ((), {"SLUICEWAY_MAX_MESSAGE_BYTES": "10000000000"}, "max_message_bytes"),
        ((), {"SLUICEWAY_MAX_CONCURRENT_RPCS": "10000000000"}, "max_concurrent_rpcs"),
        ((), {"SLUICEWAY_MAX_CONNECTION_AGE_S": "1e10"}, "max_connection_age_s"),
        ((), {"SLUICEWAY_KEEPALIVE_TIME_S": "inf"}, "keepalive_time_s"),
        (("--intra-op-threads", "100000"), {}, "intra_op_threads"),
    ],
)
def test_a_bad_value_exits_2_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: tuple[str, ...],
    variables: dict[str, str],
    field: str,
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", *flags]) == 2
    assert f"invalid setting '{field}'" in capsys.readouterr().err


def test_an_unknown_execution_provider_is_a_setting_error() -> None:
    # A typo was accepted, and the warning blamed a model's config.pbtxt for it.
    with pytest.raises(ValidationError, match=r"\['FooProvider'\]: not onnxruntime execution providers"):
        settings("--execution-providers", "FooProvider, CPUExecutionProvider")


@pytest.mark.parametrize("value", ["", " , "])
def test_an_empty_execution_providers_setting_says_must_not_be_empty(value: str) -> None:
    # The README's word for an empty value of every setting; this one had said only "names no
    # execution provider".
    with pytest.raises(ValidationError, match=r"must not be empty: it names no execution provider"):
        settings("--execution-providers", value)


@pytest.mark.parametrize("setting", ["--model-repository", "--cache-dir", "--sample-dir"])
def test_a_path_setting_this_machine_cannot_use_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str
) -> None:
    # Each ended in a traceback (or, for the sample folder, in lost samples at the first write).
    afile = tmp_path / "afile"
    afile.write_text("x")
    value = {"--model-repository": tmp_path / "missing", "--sample-dir": afile / "x"}.get(setting, afile)
    assert main(["serve", "--port", "0", setting, str(value)]) == 2
    field = setting.removeprefix("--").replace("-", "_")
    assert f"sluiceway: invalid setting '{field}': {value}" in capsys.readouterr().err


def test_a_cache_dir_the_demo_models_cannot_be_built_in_exits_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A read-only (or full) cache_dir ended in a 46-line traceback from the demo build, exit 1.
    def read_only(settings: ServerSettings) -> NoReturn:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(server.cli, "_demo_repository", read_only)
    assert main(["serve", "--port", "0", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"sluiceway: invalid setting 'cache_dir': cannot build the demo models in {tmp_path / 'demo'}: "
        "Read-only file system\n"
    )


def test_a_variable_that_names_no_setting_is_reported_with_the_closest_one() -> None:
    """pydantic-settings passes over unknown SLUICEWAY_* variables: a typo in a manifest
    (SLUICEWAY_SHUTDOWN_GRACE=20) left the grace at its default, silently."""
    lines = unknown_variables(
        {"SLUICEWAY_SHUTDOWN_GRACE": "20", "SLUICEWAY_PORT": "1", "SLUICEWAY_TEST_WORKERS": "3", "HOME": "/"}
    )
    assert lines == [
        "environment variable SLUICEWAY_SHUTDOWN_GRACE is not a setting and is ignored "
        "(did you mean SLUICEWAY_SHUTDOWN_GRACE_S?)"
    ]
    assert unknown_variables({"sluiceway_port": "1"}) == []  # read case-insensitively, as pydantic does


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_a_bad_setting_is_one_json_line_when_the_logs_are_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """A pipeline reading JSON lines had choked on the plain refusal lines."""
    flags = ("--log-format", "json") if how == "flag" else ()
    if how == "variable":
        monkeypatch.setenv("SLUICEWAY_LOG_FORMAT", "json")
    assert main(["serve", "--port", "70000", *flags]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["message"].startswith("invalid setting 'port'")
