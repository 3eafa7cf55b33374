"""What the request path asks of lazy models (server/models/lazy.py's loads answer it): whether a
request must first wait for its model's load, the wait itself, and what a model not loaded judges
requests by meanwhile. ModelManager.on_demand holds the one the app made, when lazy models may exist.
"""

from __future__ import annotations

from typing import Protocol

from server.models.early_refusals import EarlyRefusals
from server.models.frame_rules import FrameRules
from server.models.lazy_signatures import UnnamedRouting
from server.protocol.validate import Signature


class OnDemand(Protocol):
    """Lazy models (server/models/lazy.py): a request may first wait for its model to load."""

    def needs_load(self, name: str) -> bool: ...

    def is_lazy(self, name: str) -> bool: ...

    def frame_rules(self, name: str) -> FrameRules | None: ...

    async def ready(self, name: str, remaining_s: float | None) -> None: ...

    async def signatures(self, name: str) -> dict[int, Signature] | None: ...

    def unnamed_version(self, name: str) -> int | None: ...

    def routing(self, name: str) -> UnnamedRouting | None: ...

    def draw(self) -> float: ...

    @property
    def refused_early(self) -> EarlyRefusals: ...
