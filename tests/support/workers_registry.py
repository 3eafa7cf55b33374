"""Workers' registries of system shared memory over one share directory (two registries are two
`--workers` workers), and the clients' objects they map: for the unit tests of shared_memory,
shm_workers and booked_mappings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from server.protocol.shm_book import system_book
from server.protocol.shm_workers import WorkersRegistry

Worker = Callable[..., WorkersRegistry]


def client_objects(root: Path) -> Path:
    """The clients' objects under `root`/objects, each 64 bytes of its own digit: /o1 is 1s, /o2
    2s, /o3 3s."""
    (root / "objects").mkdir()
    for digit in (1, 2, 3):
        (root / "objects" / f"o{digit}").write_bytes(bytes([digit]) * 64)
    return root / "objects"


@contextmanager
def registries(objects: Path, share: Path) -> Iterator[Worker]:
    """Makes one worker's registry on `share` each call; every one closed at the end (their watch
    threads end)."""
    share.mkdir()
    made: list[WorkersRegistry] = []

    def make(max_regions: int = 8) -> WorkersRegistry:
        registry = WorkersRegistry(
            system_book(share), allowed=True, max_regions=max_regions, max_bytes=1 << 20, directory=objects
        )
        made.append(registry)
        return registry

    try:
        yield make
    finally:
        for registry in made:
            registry.close()
