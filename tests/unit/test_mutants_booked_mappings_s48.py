"""Mutants of server/protocol/booked_mappings.py (and shm_workers.py's `_local`, which passes it how
a mapping is kept) that survived the whole-scope run of 2026-12-05 (tests/MUTANTS.md,
forty-eighth session): what a lookup serves when the name's entry changes while it opens one
(another worker's Unregister and Register, another request of this worker mapping meanwhile), how
often it looks, which entries a worker's check reads, and close's bound on a stuck check.

Two workers are two registries over one share directory (as test_shm_book.py). The other threads'
work is done inline while the lookup opens its entry (`shm_workers.adopt` wrapped), so each
interleaving is exact and the tests deterministic."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.errors import RegionNotFound
from server.protocol import shm_workers
from server.protocol.shm_book import REFRESH_S
from server.protocol.shm_book import adopt as adopt_entry
from tests.support.workers_registry import Worker, client_objects, registries


@pytest.fixture
def objects(tmp_path: Path) -> Path:
    return client_objects(tmp_path)


@pytest.fixture
def worker(objects: Path, tmp_path: Path) -> Iterator[Worker]:
    with registries(objects, tmp_path / "share") as make:
        yield make


def meanwhile(monkeypatch: pytest.MonkeyPatch, *steps: Callable[[], None]) -> None:
    """The lookup's n-th open of an entry runs `steps[n]` once it has opened it (what other threads
    did before the lookup took its lock); later opens, and those the steps make, just open."""
    left = list(steps)
    busy: list[bool] = []

    def adopt(*args: Any) -> Any:
        region = adopt_entry(*args)
        if left and not busy:
            busy.append(True)
            left.pop(0)()
            busy.pop()
        return region

    monkeypatch.setattr(shm_workers, "adopt", adopt)


def first_byte(region: Any) -> bytes:
    return bytes(region.read(0, 1))


def test_a_lookup_whose_entry_went_while_it_opened_it_serves_the_new_registration(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker unregistered the name and registered it again (/o2) while this lookup opened
    the old entry: the lookup drops that mapping and looks again, and serves the new one. The
    mutant `_still_booked` answering False for a booked entry dropped out after the second look with
    NOT_FOUND for a registered name."""
    a, b = worker(), worker()
    b.register("r", "/o1", 0, 64)

    def registered_again() -> None:
        b.unregister("r")
        b.register("r", "/o2", 0, 64)

    meanwhile(monkeypatch, registered_again)
    assert first_byte(a.lookup("r")) == b"\2"


def test_a_lookup_looks_twice_at_most(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name registered again during each of two looks: the lookup gives up (NOT_FOUND for this
    request: the name was unregistered while it ran) rather than chase a name that keeps changing;
    the next request finds the registration. The mutant `range(3)` looked a third time."""
    a, b = worker(), worker()
    b.register("r", "/o1", 0, 64)

    def again(key: str) -> Callable[[], None]:
        def step() -> None:
            b.unregister("r")
            b.register("r", key, 0, 64)

        return step

    meanwhile(monkeypatch, again("/o2"), again("/o3"))
    with pytest.raises(RegionNotFound):
        a.lookup("r")
    assert first_byte(a.lookup("r")) == b"\3"


def test_the_same_entry_mapped_meanwhile_by_another_request_here_is_served(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another request of this worker mapped the same entry first; then another worker unregistered
    the name. Both requests read the entry before the Unregister: this one is served the mapping the
    other added (as a request that resolved a region before an Unregister keeps it), without asking
    the book again. The mutants (`_held_instead(name, None)`, `held_id != entry_id`) sent the held
    mapping through the book's check, which no longer had it: NOT_FOUND."""
    a, b = worker(), worker()
    b.register("r", "/o1", 0, 64)
    inner: list[Any] = []

    def mapped_here_then_unregistered() -> None:
        inner.append(a.lookup("r"))
        b.unregister("r")

    meanwhile(monkeypatch, mapped_here_then_unregistered)
    assert a.lookup("r") is inner[0]


def test_a_stale_mapping_added_meanwhile_gives_way_to_the_current_registration(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While this lookup opened the name's entry (/o1): the name was registered again (/o2),
    another request here mapped that, and the name was registered a third time (/o3). The mapping
    held here is then neither this lookup's entry nor the book's: it is replaced, and the lookup
    serves /o3. Mutants: `_held_instead` returning that stale mapping (`held_id != entry_id`,
    `... or True`, `current is not None or ...`) served /o2; `_local`'s keep with `replace=False`
    (or None) refused the request as ALREADY_EXISTS."""
    a, b = worker(), worker()
    b.register("r", "/o1", 0, 64)

    def registered_twice_and_mapped_between() -> None:
        b.unregister("r")
        b.register("r", "/o2", 0, 64)
        assert first_byte(a.lookup("r")) == b"\2"  # (the other request's mapping, kept here)
        b.unregister("r")
        b.register("r", "/o3", 0, 64)

    meanwhile(monkeypatch, registered_twice_and_mapped_between)
    assert first_byte(a.lookup("r")) == b"\3"


def test_a_check_reads_no_entry_of_a_name_unregistered_here(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Unregister through this worker forgets which entry its mapping was: the next check (after
    the counter moved) reads only the entries of mappings still held. The mutant kept the id, so
    every check read the entry of every name this worker had ever mapped (and the ids grew)."""
    a, b = worker(), worker()
    a.register("gone", "/o1", 0, 64)
    a.register("kept", "/o1", 0, 64)
    a.unregister("gone")
    b.register("other", "/o2", 0, 64)
    b.unregister("other")  # the counter moves: a's next lookup checks its mappings
    read: list[str] = []
    real_get = a._book.get

    def counted_get(name: str) -> Any:
        read.append(name)
        return real_get(name)

    monkeypatch.setattr(a._book, "get", counted_get)
    assert first_byte(a.lookup("kept")) == b"\1"
    assert read == ["kept"]


def test_close_waits_for_a_stuck_check_five_checks_time(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound a worker's shutdown waits for its book check (a hung file system): five checks'
    time (2.5 s), what the watch's close is given. The mutant gave it six."""
    a = worker()
    watch = a._watch
    given: list[float] = []
    real_close = watch.close

    def close(timeout_s: float) -> None:
        given.append(timeout_s)
        real_close(timeout_s)

    monkeypatch.setattr(watch, "close", close)
    a._stop_tracking()
    assert given == [5 * REFRESH_S] and not watch.is_alive()
