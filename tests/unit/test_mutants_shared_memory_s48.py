"""Mutants of server/protocol/shared_memory.py that survived the whole-scope run of 2026-12-05
(tests/MUTANTS.md, forty-eighth session): the second admission after a collection (`_keep`'s
retry: its refusal's wording, the entry id it notes, a mapping of the name added meanwhile) and a
worker's stale mapping of the name let go before the limits are checked (`_admit`).

A mapping unregistered but still counted, which only a collection releases, is one left in a
reference cycle; automatic collection is off in those tests, so the registry's own `gc.collect()`
is the one that frees it. What another thread does meanwhile is done inline (a gc callback, a
wrapped `shm_workers.adopt`), so each interleaving is exact."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.errors import SharedMemoryLimit
from server.protocol import shm_workers
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.shm_book import adopt as adopt_entry
from server.protocol.shm_regions import Region
from tests.support.workers_registry import Worker, client_objects, registries


@pytest.fixture
def objects(tmp_path: Path) -> Path:
    return client_objects(tmp_path)


@pytest.fixture
def worker(objects: Path, tmp_path: Path) -> Iterator[Worker]:
    with registries(objects, tmp_path / "share") as make:
        yield make


@pytest.fixture
def no_automatic_collection() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()


def left_in_a_cycle(registry: SharedMemoryRegistry, name: str) -> None:
    """A request's region of `name` left in a reference cycle (a failed request's traceback), then
    the name unregistered: the mapping still counts until a collection."""
    registry.register(name, "/o1", 0, 64)
    cycle: list[Any] = [registry.lookup(name)]
    cycle.append(cycle)
    registry.unregister(name)
    del cycle
    assert registry.live_mappings == (1, 64)


def test_a_register_refused_again_after_the_collection_says_register(objects: Path) -> None:
    """At the limit with an unregistered mapping still held by a request, the collection frees
    nothing and the second admission refuses: in a Register's words. The mutant's retry passed
    `verb=None` ("cannot None shared memory region ...")."""
    registry = SharedMemoryRegistry(allowed=True, max_regions=1, max_bytes=1 << 20, directory=objects)
    registry.register("a", "/o1", 0, 64)
    held = registry.lookup("a")
    registry.unregister("a")
    with pytest.raises(SharedMemoryLimit) as refused:
        registry.register("b", "/o2", 0, 64)
    assert str(refused.value) == (
        "cannot register shared memory region 'b': 1 regions are mapped, the most this server maps "
        "(max_shm_regions=1)"
    )
    del held


@pytest.mark.usefixtures("no_automatic_collection")
def test_a_register_admitted_after_the_collection_is_still_its_entrys_mapping(worker: Worker) -> None:
    """A worker's Register at its limit is admitted once the collection frees the cycle's mapping:
    that mapping is noted as the Register's entry, so the check after another worker's Unregister
    keeps it (the same object is served). The mutant's retry noted no entry (`tag=None`): the
    check found it stale and dropped it, and the lookup mapped the region again."""
    a, b = worker(max_regions=1), worker()
    left_in_a_cycle(a, "old")
    a.register("r", "/o2", 0, 64)
    assert a.live_mappings == (1, 64)  # (the cycle went with the Register's collection)
    first = a.lookup("r")
    b.register("other", "/o3", 0, 64)
    b.unregister("other")  # the counter moves: a's next lookup checks its mappings
    assert a.lookup("r") is first


@pytest.mark.usefixtures("no_automatic_collection")
def test_a_register_whose_entry_a_request_here_mapped_during_the_collection_keeps_its_own(
    worker: Worker,
) -> None:
    """A worker's Register at its limit waits on a collection; meanwhile a request here maps the
    Register's new entry (through its descriptor) into the room the collection made. The retry then
    replaces that mapping with the Register's own, whose descriptor is the one the entry names. The
    mutant's retry passed `replace=None` and refused the Register as ALREADY_EXISTS."""
    a = worker(max_regions=1)
    left_in_a_cycle(a, "old")
    mapped: list[bool] = []

    def a_request_meanwhile(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and not mapped:
            mapped.append(a.lookup("r") is not None)  # (the request is done with it at once)

    gc.callbacks.append(a_request_meanwhile)
    try:
        a.register("r", "/o2", 0, 64)
    finally:
        gc.callbacks.remove(a_request_meanwhile)
    assert mapped == [True]
    served, entry = a.lookup("r"), a._book.get("r")
    assert isinstance(served, Region) and entry is not None
    assert served.fd == entry.fd and a.live_mappings == (1, 64)


def test_a_stale_mapping_of_the_name_is_let_go_before_the_limits_are_checked(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker at its limit of one mapping, which is a stale one of the name a lookup maps (added
    by another request here while the lookup opened an older entry; the name then registered again):
    the stale mapping goes first and no longer counts, so the lookup is admitted and serves the
    current registration. The mutant (`_forget(None)`) still counted it and refused: "cannot map"."""
    a, b = worker(max_regions=1), worker()
    b.register("r", "/o1", 0, 64)
    steps: list[str] = []

    def adopt(*args: Any) -> Any:
        region = adopt_entry(*args)
        if not steps:
            steps.append("meanwhile")
            b.unregister("r")
            b.register("r", "/o2", 0, 64)
            assert bytes(a.lookup("r").read(0, 1)) == b"\2"  # the other request's mapping, kept here
            b.unregister("r")
            b.register("r", "/o3", 0, 64)
        return region

    monkeypatch.setattr(shm_workers, "adopt", adopt)
    assert bytes(a.lookup("r").read(0, 1)) == b"\3"
