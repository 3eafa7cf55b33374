"""The integer channel arguments grpc core reads on a server, for `grpc_server_args`' warning.

grpc core ignores a name it does not know, without a word: a typo (`grpc.keepalive_tme_ms`) left
the operator's tuning silently off. A name not listed here is still passed as given (a newer grpc
may read it), with one warning line naming the closest known one. The names are grpc core's
(include/grpc/impl/channel_arg_names.h and the server's and HTTP/2 transport's own), integer-valued
and meaningful to a server.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

KNOWN_SERVER_INT_ARGS = frozenset(
    {
        "grpc.census",
        "grpc.loadreporting",
        "grpc.server_call_metric_recording",
        "grpc.minimal_stack",
        "grpc.max_concurrent_streams",
        "grpc.max_receive_message_length",
        "grpc.max_send_message_length",
        "grpc.max_connection_idle_ms",
        "grpc.max_connection_age_ms",
        "grpc.max_connection_age_grace_ms",
        "grpc.per_message_compression",
        "grpc.per_message_decompression",
        "grpc.http2.initial_sequence_number",
        "grpc.http2.lookahead_bytes",
        "grpc.http2.hpack_table_size.decoder",
        "grpc.http2.hpack_table_size.encoder",
        "grpc.http2.max_frame_size",
        "grpc.http2.bdp_probe",
        "grpc.http2.min_time_between_pings_ms",
        "grpc.http2.min_ping_interval_without_data_ms",
        "grpc.http2.min_recv_ping_interval_without_data_ms",
        "grpc.http2.ping_timeout_ms",
        "grpc.server_max_unrequested_time_in_server",
        "grpc.http2.max_pings_without_data",
        "grpc.http2.max_ping_strikes",
        "grpc.http2.write_buffer_size",
        "grpc.http2.true_binary",
        "grpc.http2.max_requests_per_read",
        "grpc.experimental.http2.enable_preferred_frame_size",
        "grpc.keepalive_time_ms",
        "grpc.keepalive_timeout_ms",
        "grpc.keepalive_permit_without_calls",
        "grpc.server_handshake_timeout_ms",
        "grpc.tsi.max_frame_size",
        "grpc.max_metadata_size",
        "grpc.absolute_max_metadata_size",
        "grpc.so_reuseport",
        "grpc.expand_wildcard_addrs",
        "grpc.max_channel_trace_event_memory_per_node",
        "grpc.enable_channelz",
        "grpc.experimental.tcp_read_chunk_size",
        "grpc.experimental.tcp_min_read_chunk_size",
        "grpc.experimental.tcp_max_read_chunk_size",
        "grpc.experimental.tcp_tx_zerocopy_enabled",
        "grpc.experimental.tcp_tx_zerocopy_send_bytes_threshold",
        "grpc.experimental.tcp_tx_zerocopy_max_simultaneous_sends",
        "grpc.tcp_receive_buffer_size",
        "grpc.experimental.server_config_change_drain_grace_time_ms",
        "grpc.dscp",
        "grpc.max_allowed_incoming_connections",
        "grpc.security_frame_allowed",
        "grpc.server.max_pending_requests",
        "grpc.server.max_pending_requests_hard_limit",
        "grpc.surface_user_agent",
        "grpc.workaround.cronet_compression",
    }
)


def unfamiliar(names: Iterable[str]) -> list[str]:
    """A line for each of `names` grpc core is not known to read on a server, naming the closest
    known one when there is one."""
    lines = []
    for name in names:
        if name in KNOWN_SERVER_INT_ARGS:
            continue
        close = difflib.get_close_matches(name, KNOWN_SERVER_INT_ARGS, n=1, cutoff=0.8)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        lines.append(
            f"grpc_server_args: '{name}' is not an integer argument grpc core is known to read on a "
            f"server{hint}; passed as given (grpc ignores a name it does not know)"
        )
    return lines
