"""Rules across settings (server/settings_rules.py), through ServerSettings as `serve` builds it: a
tester's settings that had passed and failed later, or never."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import ServerSettings
from tests.unit.test_settings_flags import clean_environment

__all__ = ["clean_environment"]  # autouse: no SLUICEWAY_* leaks in, and nothing starts


def refused(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        ServerSettings(**values)  # type: ignore[arg-type]
    return str(caught.value)


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"port": 9000, "metrics_port": 9000}, "port 9000 is also metrics_port"),
        # Worker i serves metrics on metrics_port + i: worker 1's bind had failed after worker 0 served.
        ({"port": 21996, "metrics_port": 21995, "workers": 2},
         "port 21996 is also metrics_port + i (ports 21995-21996)"),
        ({"metrics_port": 65535, "workers": 2}, "65536 is above 65535"),
    ],
)  # fmt: skip
def test_ports_that_collide_are_refused_naming_them(values: dict[str, object], said: str) -> None:
    assert said in refused(**values)


def test_ports_that_need_no_check_pass() -> None:
    ServerSettings(port=9000, metrics_port=9000, metrics=False)  # no metrics port served
    ServerSettings(port=0, metrics_port=0)  # each picks a free port
    ServerSettings(port=9002, metrics_port=9000, workers=2)  # 9000 and 9001


def test_streams_stay_below_the_rpc_slots() -> None:
    """14 open streams with max_concurrent_rpcs 12 (max_streams left at 2048) took every slot:
    health checks and unary calls were answered RESOURCE_EXHAUSTED."""
    assert ServerSettings().max_streams == 2048  # below the default 4096
    assert ServerSettings(max_concurrent_rpcs=12).max_streams == 6
    assert ServerSettings(max_concurrent_rpcs=12, max_streams=11).max_streams == 11
    said = refused(max_concurrent_rpcs=10, max_streams=20)
    assert "max_streams 20 must be below max_concurrent_rpcs 10" in said
    assert "max_concurrent_rpcs must be at least 2" in refused(max_concurrent_rpcs=1)


@pytest.mark.parametrize(
    ("host", "kept"),
    [
        ("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "0.0.0.0"), ("::", "::"), ("::1", "::1"), ("[::1]", "[::1]"),
        ("localhost", "localhost"), ("my-host.example.com", "my-host.example.com"),
        ("my_host", "my_host"),  # docker-compose service names: had been refused
        ("127.1", "127.0.0.1"),  # an IPv4 shorthand: as its dotted quad (grpc refused 127.1 itself, s55)
        ("localhost.", "localhost"), ("node-1.", "node-1"),  # grpc's resolver refused the dot
    ],
)  # fmt: skip
def test_a_bindable_host_is_taken(host: str, kept: str) -> None:
    assert ServerSettings(host=host).host == kept
    assert ServerSettings(metrics_host=host).metrics_host == kept  # checked alike (it was not: s55)


@pytest.mark.parametrize("host", ["999.1.1.1", "bad host", "-lead.example", "a..b", "x" * 64, "1:2:3"])
def test_a_host_that_cannot_be_bound_is_refused_naming_it(host: str) -> None:
    """They had failed in grpc's bind, exit 1, with a raw grpc line and no setting named."""
    said = refused(host=host)
    assert "host" in said and "is not an IP address or a host name" in said


def test_a_repository_the_server_cannot_list_exits_2_before_listening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A volume with the wrong fsGroup: "listening" was printed, then a 46-line traceback, exit 1.
    (The tests run as root, who lists anything: the refusal is the OS's, stood in for here.)"""
    from server import cli

    def denied(path: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.os, "scandir", denied)
    assert cli.main(["serve", "--model-repository", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"sluiceway: invalid setting 'model_repository': {tmp_path}: cannot list it: Permission denied\n"
    )


def test_a_cache_dir_behind_a_parent_it_cannot_search_exits_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sudo -u nobody` without -H: HOME=/root, ~/.cache/sluiceway behind a 0700 folder ended in a
    PermissionError traceback, exit 1."""
    from server import cli

    cache = tmp_path / "closed" / "cache"
    real_exists = Path.exists

    def exists(self: Path, *args: object, **kwargs: object) -> bool:
        if self == cache:
            raise PermissionError(13, "Permission denied")
        return real_exists(self)

    monkeypatch.setattr(Path, "exists", exists)
    assert cli.main(["serve", "--model-repository", str(tmp_path), "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sluiceway: invalid setting 'cache_dir': {cache}: Permission denied"), err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("arg", "owner"),
    [
        ("grpc.max_receive_message_length=-5", "max_message_bytes"),  # -5: grpc's unlimited
        ("grpc.max_send_message_length=1024", "max_message_bytes"),
        ("grpc.so_reuseport=1", "workers"),
    ],
)
def test_a_grpc_argument_a_setting_owns_is_refused_naming_the_setting(arg: str, owner: str) -> None:
    """It had replaced the setting's own value silently (a receive limit around max_message_bytes)."""
    assert f"is set by the setting {owner}: use that" in refused(grpc_server_args=arg)


@pytest.mark.parametrize(
    ("host", "address"),
    [("::", "[::]:8001"), ("[::1]", "[::1]:8001"), ("::ffff:127.0.0.1", "[::ffff:127.0.0.1]:8001"),
     ("127.0.0.1", "127.0.0.1:8001"), ("localhost", "localhost:8001")],
)  # fmt: skip
def test_grpc_binds_an_ipv6_host_in_brackets(host: str, address: str) -> None:
    """`--host ::` passed the settings, then grpc's resolver refused ':::8001' (exit 1, a raw line)."""
    from server.settings_rules import grpc_address

    assert grpc_address(host, 8001) == address


def test_a_grpc_argument_of_thousands_of_digits_is_refused_by_its_range() -> None:
    """Python's int() of 4,300+ digits had answered with its own limit and advice."""
    said = refused(grpc_server_args="grpc.a=" + "9" * 5000)
    assert "'grpc.a': grpc takes -2^31 to 2^31-1" in said and "set_int_max_str_digits" not in said


def test_a_long_value_is_shown_once(capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli import main

    assert main(["serve", "--host", "a" * 300]) == 2
    err = capsys.readouterr().err
    assert err.count("'" + "a" * 80 + "'") == 1 and "(got" not in err, err
