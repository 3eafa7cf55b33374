"""The endpoint's grpc core channel arguments: message sizes, port reuse, keepalive and connection
age, and the backlog of calls not yet taken up, with an operator's `grpc_server_args` over ours.

Separate from the factory (app.py) because these are pure functions of the settings, each bound
measured and explained here, and tested without a server.
"""

from __future__ import annotations

import logging

from server.grpc_arg_names import unfamiliar
from server.protocol.frame_size import received_ceiling
from server.settings import ServerSettings
from server.settings_rules import parse_grpc_args

log = logging.getLogger(__name__)


def keepalive_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """HTTP/2 keepalive enforcement and connection age (grpc core channel arguments)."""
    options = [
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        # grpc core (1.85) waits this long for a keepalive ping's ack, not keepalive_timeout_ms:
        # without it a dead peer's connection and streams stayed open 60 s (its default).
        ("grpc.http2.ping_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", int(settings.min_client_ping_s * 1000)),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(settings.min_client_ping_s * 1000)),
        # Clients that send more bad pings than this get GOAWAY "too_many_pings".
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if settings.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)),
        ]
    return options


# grpc core's own bound on calls received but not yet taken up by grpc.aio (which takes them one
# at a time); a channel argument is a C int.
_GRPC_INT_MAX = 2**31 - 1


def pending_call_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """grpc core's backlog of calls not yet taken up by grpc.aio: without these it cancels calls at
    random (CANCELLED "CANCELLED", never seen by our handlers nor counted) once more than 1,000
    wait, up to all past 3,000 (grpc's `max_pending_requests` defaults): 5-10% of 2,000 callers
    at once, 21% of 3,000. Bounded at twice `max_concurrent_rpcs` (soft = hard: no random
    refusals below it), so a burst of up to that many reaches the server's own limit (rpc_slots.py),
    which answers RESOURCE_EXHAUSTED and counts it; a call past this backlog is still cancelled
    by core, seen by no Python code and counted nowhere.
    `grpc_server_args` may set either."""
    bound = min(2 * settings.max_concurrent_rpcs, _GRPC_INT_MAX)
    return [
        ("grpc.server.max_pending_requests", bound),
        ("grpc.server.max_pending_requests_hard_limit", bound),
    ]


def grpc_server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """The grpc core channel arguments of the endpoint; `grpc_server_args` (HTTP/2 tuning,
    BENCHMARKS.md section 12) replace ours of the same name: grpc core keeps the first of two."""
    ours = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Above max_message_bytes: our deserializer refuses a message over that alone (a stream's
        # frame with an error frame); past this ceiling grpc ends the call (frame_size.py).
        ("grpc.max_receive_message_length", received_ceiling(settings.max_message_bytes)),
        # A port already in use is an error, never a silently shared socket; workers spawned
        # by `--workers` share the port their parent holds.
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        *keepalive_options(settings),
        *pending_call_options(settings),  # a burst of callers is never CANCELLED at random
    ]
    extra = parse_grpc_args(settings.grpc_server_args or "")
    named = {name for name, _ in extra}
    for line in unfamiliar(sorted(named)):  # grpc ignores such a name without a word
        log.warning("%s", line)
    return [option for option in ours if option[0] not in named] + extra
