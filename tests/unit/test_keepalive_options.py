"""The keepalive and connection-age settings reach grpc core as its channel arguments."""

from __future__ import annotations

from server.grpc_options import keepalive_options
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
