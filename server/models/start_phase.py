"""Where the server's start is, for what its answers say meanwhile: the repository being read (a
model not in the index yet is not ready, retryable, rather than NOT_FOUND, which no client
retries; RepositoryIndex waits for the listing) and the start-up load under way (ServerReady is
false until it has ended: it was true on the empty index right after the port opened, then flapped
as each model was added).
"""

from __future__ import annotations

import asyncio

from server.errors import ShuttingDown


class StartPhase:
    """The start's phases: reading the repository (`reading` .. `listed_all`), then its load
    (until `load_ended`). ModelManager owns one; everything runs on the event loop."""

    def __init__(self) -> None:
        self.loading = True  # the start-up load has not ended
        self.listing = False  # the repository is being read: the index is not complete
        self._listed = asyncio.Event()  # cleared while listing: RepositoryIndex waits on it
        self._listed.set()

    def reading(self) -> None:
        """The server answers before it has read its repository (SluicewayServer.start)."""
        self.listing = True
        self._listed.clear()

    def listed_all(self) -> None:
        """Every model of the repository is in the index (loading, lazy, failed, not chosen)."""
        self.listing = False
        self._listed.set()

    def load_ended(self) -> None:
        """The models the start loads have loaded (or failed): ServerReady may now be true."""
        self.loading = self.listing = False
        self._listed.set()

    def stopping(self) -> None:
        """The server stops: an index waiting for the listing is answered now, not cut after the
        whole grace (`wait_listed` raises ShuttingDown when the listing had not ended)."""
        self._listed.set()

    async def wait_listed(self) -> None:
        """Returns once the repository is listed: an index asked for while it is being read would
        have been empty (a CI run polled it in that span and saw none of the seven models)."""
        await self._listed.wait()
        if self.listing:  # stop() woke it: the listing will not end (a stop during the start)
            raise ShuttingDown("server is shutting down before its model repository was listed")
