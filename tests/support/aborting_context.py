"""The part of a grpc.aio ServicerContext an error answer uses: `abort`, recorded, raising as grpc's
does (Aborted here), for handlers called without a server."""

from __future__ import annotations

import grpc


class Aborted(Exception):
    pass


class AbortingContext:
    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str, **_: object) -> None:
        self.status = (code, details)
        raise Aborted(details)
