"""The clients' arguments checked where they are given, naming the argument: timeouts (bool, too
long), endpoints, inputs, and the health probe's --timeout-s. No server: each is refused first."""

from __future__ import annotations

import numpy as np
import pytest

from clients import AsyncClient, Client, health_probe
from clients.base import MAX_TIMEOUT_S, check_timeout

TOO_LONG = (MAX_TIMEOUT_S * 1.5, 9.3e9, 1e13)


@pytest.mark.parametrize("value", TOO_LONG)
def test_a_timeout_over_the_maximum_is_refused_naming_the_setting_and_the_limit(value: float) -> None:
    """Over ~9.2e9 s grpc's deadline overflowed (DEADLINE_EXCEEDED at once); at 1e13 s protobuf
    raised a bare "Value out of range" for the `timeout` parameter."""
    with pytest.raises(ValueError, match=r"default_timeout_s must be at most 1e\+09 s"):
        Client("127.0.0.1:1", default_timeout_s=value)
    with pytest.raises(ValueError, match=r"stream_timeout_s must be at most"):
        AsyncClient("127.0.0.1:1", stream_timeout_s=value)
    client = AsyncClient("127.0.0.1:1")
    with pytest.raises(ValueError, match=r"frame_timeout_s must be at most"):
        client.stream("m", frame_timeout_s=value)
    with pytest.raises(ValueError, match=r"^timeout_s must be at most"):
        client.stream("m", timeout_s=value)
    with Client("127.0.0.1:1") as sync, pytest.raises(ValueError, match=r"^timeout_s must be at most"):
        sync.server_live(timeout_s=value)
    assert check_timeout(MAX_TIMEOUT_S, "t") == MAX_TIMEOUT_S


def test_a_bool_timeout_is_refused_not_taken_as_one_second() -> None:
    with pytest.raises(TypeError, match="timeout_s must be a number of seconds, got bool True"):
        check_timeout(True, "timeout_s")
    with pytest.raises(TypeError, match="default_timeout_s"):
        Client("127.0.0.1:1", default_timeout_s=True)
    assert check_timeout(np.float32(0.5), "t") == 0.5  # numpy numbers are numbers


@pytest.mark.parametrize("endpoints", ["", " ", ["127.0.0.1:1", ""]])
def test_an_empty_endpoint_is_refused(endpoints: str | list[str]) -> None:
    """Client("") was taken, and every call failed UNKNOWN later."""
    with pytest.raises(ValueError, match="endpoints must be a 'host:port' address"):
        Client(endpoints)
    with pytest.raises(ValueError, match="fallback must be a 'host:port' address"):
        Client("127.0.0.1:1", fallback="")


def test_inputs_given_as_a_list_are_refused_naming_the_mistake() -> None:
    """infer("mlp", [array]) raised a bare AttributeError ('list' object has no attribute 'items')."""
    with (
        Client("127.0.0.1:1") as client,
        pytest.raises(TypeError, match="mapping of input name -> array, got list"),
    ):
        client.infer("mlp", [np.zeros((1, 64), np.float32)])  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "2e9", "x"])
def test_the_probe_refuses_a_timeout_that_is_no_timeout(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--timeout-s 0 had probed anyway and printed NOT SERVING, blaming the server."""
    with pytest.raises(SystemExit) as exited:
        health_probe.main(["--address", "127.0.0.1:1", "--timeout-s", value])
    assert exited.value.code == 1  # a usage error: Docker reserves a HEALTHCHECK's exit 2
    err = capsys.readouterr()
    assert "--timeout-s" in err.err and "NOT SERVING" not in err.out
