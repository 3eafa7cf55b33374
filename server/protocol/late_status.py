"""Statuses sent to calls whose handler task the server cancelled (a stalled stream's)."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from server.protocol.answers import abort_with


class LateStatuses:
    """Statuses sent to calls whose handler the server cancelled. grpc.aio sends none for a
    cancelled handler: its call stays open on the wire, and a stalled stream's client that read
    again got what grpc had taken to write, then nothing until its own deadline (for good without
    one). Sent from a task of their own (the handler's is gone), they follow what grpc had taken:
    a client that never reads again never gets one (grpc.aio has no server-side RST_STREAM)."""

    def __init__(self) -> None:
        self._sending: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references

    def send(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        task = asyncio.get_running_loop().create_task(_send_status(context, exc))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)


async def _send_status(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    with contextlib.suppress(Exception):  # grpc's AbortError once sent; or the call had ended
        await abort_with(context, exc)
