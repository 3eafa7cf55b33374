"""A TCP proxy on 127.0.0.1 that can stall: both directions stop forwarding while both sockets
stay open, as a peer behind a dead NAT entry or a hung host looks to the other side. Runs in the
test's event loop; `server_closed` is set when the upstream side (the server) ends a connection.
`hold_answers()` delays the server's bytes instead (kept in order, forwarded at `release_answers()`):
a network that is late, not one that loses them; `hold_requests()` the client's bytes alike."""

from __future__ import annotations

import asyncio
import contextlib


class StallingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server_closed = asyncio.Event()  # the server ended a proxied connection
        self._flowing = asyncio.Event()  # cleared for good by stall()
        self._flowing.set()
        self._answers = asyncio.Event()  # cleared while the server's bytes are held back
        self._answers.set()
        self._requests = asyncio.Event()  # cleared while the client's bytes are held back
        self._requests.set()
        self._listener: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> StallingProxy:
        self._listener = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._listener.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._listener is not None
        self._listener.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stall(self) -> None:
        """From now on nothing is forwarded either way; the sockets stay open."""
        self._flowing.clear()

    def hold_answers(self) -> None:
        """From now on the server's bytes wait in the proxy, in order, until release_answers()."""
        self._answers.clear()

    def release_answers(self) -> None:
        self._answers.set()

    def hold_requests(self) -> None:
        """From now on the client's bytes wait in the proxy, in order, until release_requests()."""
        self._requests.clear()

    def release_requests(self) -> None:
        self._requests.set()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_writer, server_writer]
        for task in (
            asyncio.create_task(self._pump(client_reader, server_writer, upstream_eof=False)),
            asyncio.create_task(self._pump(server_reader, client_writer, upstream_eof=True)),
        ):
            self._tasks.add(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream_eof: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                await (self._answers if upstream_eof else self._requests).wait()
                if self._flowing.is_set():  # stalled: the bytes go nowhere, the sockets stay open
                    writer.write(data)
                    await writer.drain()
        if upstream_eof:
            self.server_closed.set()
