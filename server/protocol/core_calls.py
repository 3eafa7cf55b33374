"""grpc core's own count of the calls it has taken, read from channelz, for the drain.

A call grpc core has taken but grpc.aio has not yet handed to a handler is invisible to the
handlers' count (calls.py), and grpc core answers it CANCELLED when the endpoint stops
(grpc/grpc#41785: `Server::ShutdownAndNotify` -> `KillPendingWorkLocked` -> `ZombifyPending`,
whose `KillZombie` unrefs a call no handler ever answered). grpc.aio asks core for one call per
method at a time and asks for the next only when its event loop gets to it, so under load calls
wait there. Core counts each call when it takes it (`calls_started`) and when it ends
(`calls_succeeded`, `calls_failed`), in its channelz node, which is on by default: the drain keeps
the endpoint open until those counts show no call left unanswered and none new for its quiet window.

channelz is read through grpc's Cython module (`grpc._cython.cygrpc.channelz_get_server`, what the
grpcio-channelz package serves): where it is missing, or channelz is turned off
(`grpc.enable_channelz` 0 in `grpc_server_args`), there is no count and the drain watches its
handlers alone, as it did before.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class CoreCounts(NamedTuple):
    started: int  # calls grpc core has taken
    ended: int  # of those, calls that have ended (answered, failed or cancelled)

    @property
    def unanswered(self) -> int:
        """Calls core has taken that have not ended: running, waiting for a handler, or sending."""
        return self.started - self.ended


def _cygrpc() -> Any | None:
    try:
        return importlib.import_module("grpc._cython.cygrpc")
    except ImportError:  # pragma: no cover - grpcio always ships it; guarded for a future layout
        return None


def server_ids() -> frozenset[int]:
    """The channelz ids of every grpc server of this process (empty when channelz is missing)."""
    cygrpc = _cygrpc()
    get_servers = getattr(cygrpc, "channelz_get_servers", None)
    if get_servers is None:
        return frozenset()
    ids: set[int] = set()
    start = 0
    while True:  # paged: each page ends with "end" or the next id to ask from
        try:
            page = json.loads(get_servers(start))
        except (ValueError, TypeError):
            return frozenset(ids)
        servers = page.get("server", [])
        ids.update(int(s["ref"]["serverId"]) for s in servers)
        if page.get("end", True) or not servers:
            return frozenset(ids)
        start = max(ids) + 1


class CoreCalls:
    """One grpc server's call counts, as grpc core keeps them."""

    def __init__(self, server_id: int, read: Callable[[int], str]) -> None:
        self.server_id = server_id
        self._read = read

    @classmethod
    def of_new_server(cls, before: frozenset[int]) -> CoreCalls | None:
        """The server created since `before` (`server_ids()` just before `grpc.aio.server()`), or
        None (with a log line) when there is not exactly one such server: channelz off or
        missing, or another thread made a server at the same moment."""
        get_server = getattr(_cygrpc(), "channelz_get_server", None)
        new = server_ids() - before
        if get_server is None or len(new) != 1:
            log.info(
                "grpc core's call counts (channelz) are not available (%d new servers found): the "
                "drain watches its handlers only, and a call grpc has taken but not yet handed to "
                "one when the endpoint closes is answered CANCELLED (grpc/grpc#41785)",
                len(new),
            )
            return None
        return cls(next(iter(new)), get_server)

    def counts(self) -> CoreCounts | None:
        """The counts now, or None when they cannot be read (the server is gone)."""
        try:
            data = json.loads(self._read(self.server_id))["server"]["data"]
        except (ValueError, KeyError, TypeError):
            return None
        # proto3 JSON: int64 counts are strings, and a zero is left out.
        ended = int(data.get("callsSucceeded", 0)) + int(data.get("callsFailed", 0))
        return CoreCounts(int(data.get("callsStarted", 0)), ended)
