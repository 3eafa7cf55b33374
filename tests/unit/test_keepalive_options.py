"""The keepalive and connection-age settings reach grpc core as its channel arguments."""

from __future__ import annotations

import logging

import pytest

from server.grpc_arg_names import unfamiliar
from server.grpc_options import grpc_server_options, keepalive_options
from server.settings import ServerSettings


def test_keepalive_enforcement_and_age_map_to_grpc_arguments() -> None:
    options = dict(
        keepalive_options(
            ServerSettings(keepalive_time_s=30, min_client_ping_s=2.5, max_connection_age_s=600)
        )
    )
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 2_500
    assert options["grpc.http2.max_ping_strikes"] == 2
    assert options["grpc.max_connection_age_ms"] == 600_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000


def test_connections_never_age_out_by_default() -> None:
    options = dict(keepalive_options(ServerSettings()))
    assert "grpc.max_connection_age_ms" not in options


def test_every_argument_we_set_is_one_grpc_is_known_to_read() -> None:
    settings = ServerSettings(max_connection_age_s=600)
    assert unfamiliar(name for name, _ in grpc_server_options(settings)) == []


def test_an_unknown_grpc_argument_is_passed_with_a_warning_naming_the_closest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # grpc core ignores a name it does not know without a word: a typo left the tuning off.
    settings = ServerSettings(grpc_server_args="grpc.keepalive_tme_ms=5000,grpc.enable_channelz=0")
    with caplog.at_level(logging.WARNING, logger="server.grpc_options"):
        options = dict(grpc_server_options(settings))
    assert options["grpc.keepalive_tme_ms"] == 5000 and options["grpc.enable_channelz"] == 0
    assert [r.getMessage() for r in caplog.records] == [
        "grpc_server_args: 'grpc.keepalive_tme_ms' is not an integer argument grpc core is known to "
        "read on a server (did you mean 'grpc.keepalive_time_ms'?); passed as given (grpc ignores a "
        "name it does not know)"
    ]
