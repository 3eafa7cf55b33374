"""Retiring model versions a reload replaced or an unload (or eviction) ended: the shared response
cache and prediction sampling let go of them, their live sequences end saying why (once the requests
they had queued have run), their batchers drain within the shutdown grace, and their backend
instances close.

Retiring has a synchronous start (`begin`, before any await: requests still running on a retired
version must not fill the cache) and an asynchronous end (`retire`); `retire` repeats `begin`, which
is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from batcher.sequence_types import RETIRED
from server.models.response_cache import ResponseCache
from server.models.sequence_routing import SequenceRouting
from server.models.versions import ModelVersion
from server.observability.sampling import SamplingRegistry


class Retirement:
    """How the manager's versions leave service (ModelManager owns one)."""

    def __init__(
        self,
        grace_s: float,
        response_cache: ResponseCache | None,
        sampling: SamplingRegistry,
        sequence_routing: SequenceRouting,
    ) -> None:
        self._grace_s = grace_s  # shutdown_grace_s: how long a retired version's queue may drain
        self._response_cache = response_cache
        self._sampling = sampling
        self._sequence_routing = sequence_routing

    def discard_cached(self, name: str) -> None:
        """Forget `name`'s cached outputs (the versions that computed them were replaced or went)."""
        if self._response_cache is not None:
            self._response_cache.discard_model(name)

    def begin(self, versions: Iterable[ModelVersion], why: str = RETIRED) -> None:
        """The synchronous start of retiring `versions` (before any await): requests still running
        on them must not fill the cache; their sequences end (their state goes with them), `why`."""
        for version in versions:
            version.response_cache = None
            self._sampling.retire(version.sampler)
            self._sequence_routing.retire(version, why)

    async def retire(
        self, versions: Iterable[ModelVersion], handover: bool = False, why: str = RETIRED
    ) -> None:
        """Stop `versions` (draining within shutdown_grace_s) and close their instances. `handover`
        (replaced by a reload): what is still queued after the grace goes to the new versions
        (RequestPath.finish resubmits a NotAccepting), where it failed UNAVAILABLE though they
        were ready (12 of 20 queued requests behind a slow model)."""
        versions = list(versions)
        self.begin(versions, why)
        for version in versions:
            grace_s = self._grace_s
            if version.sequences is not None:
                # First the requests its live sequences had queued (waiting for their turn): they
                # were accepted, and had been refused "must specify the START flag" at once.
                began = time.monotonic()
                await version.sequences.drain(grace_s)
                grace_s = max(0.0, grace_s - (time.monotonic() - began))
            await version.batcher.stop(drain=True, timeout_s=grace_s, handover=handover, finish_runs=True)
            for backend in version.backends:
                backend.close()
