"""A worker's first lookup of a region (system or CUDA) racing an Unregister through another worker
and a Register of the same name through this one (booked_mappings.py `_held_instead`): the
Register's mapping stands, the request gets the registered region, and the Register's descriptor
stays open for the other workers. Before, the lookup replaced the Register's mapping with the old
entry's, then dropped both: NOT_FOUND for a registered name, and once the client unlinked its
object (as it may after Register) no worker could map it (a reviewer's mutation run)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.backends.cuda_shm import CudaRegion
from server.backends.cudart import CudaRuntime
from server.errors import RegionNotFound
from server.protocol import shm_workers
from server.protocol.cuda_shm_workers import KIND, CudaEntry, CudaWorkersRegistry
from server.protocol.shm_book import ShmBook, system_book
from server.protocol.shm_workers import WorkersRegistry
from tests.support.fake_cudart import FakeCudart


@pytest.fixture
def objects(tmp_path: Path) -> Path:
    (tmp_path / "share").mkdir()
    folder = tmp_path / "objects"
    folder.mkdir()
    (folder / "o").write_bytes(b"\1" * 64)  # the first registration's object
    (folder / "p").write_bytes(b"\2" * 64)  # the second's
    return folder


@pytest.fixture
def system(objects: Path) -> Iterator[list[WorkersRegistry]]:
    share = objects.parent / "share"
    made = [
        WorkersRegistry(system_book(share), allowed=True, max_regions=8, max_bytes=1 << 20, directory=objects)
        for _ in range(3)
    ]
    yield made
    for worker in made:
        worker.close()


def test_a_system_lookup_racing_a_register_here_answers_the_registered_region(
    system: list[WorkersRegistry], objects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = system
    a.register("x", "/o", 0, 64)
    adopt = shm_workers.adopt
    registered: list[Any] = []

    def adopt_then_registered_again(*args: Any) -> Any:
        region = adopt(*args)  # b has opened the first registration's object; meanwhile:
        monkeypatch.setattr(shm_workers, "adopt", adopt)
        a.unregister("x")
        b.register("x", "/p", 0, 64)  # another request thread of b registers the name again
        registered.append(b._regions["x"])  # its own mapping: the descriptor its entry names
        return region

    monkeypatch.setattr(shm_workers, "adopt", adopt_then_registered_again)
    found = b.lookup("x")
    assert found is registered[0] and bytes(found.read(0, 1)) == b"\2"  # not mapped again
    assert b.lookup("x") is found
    del found
    registered.clear()
    gc.collect()
    (objects / "p").unlink()  # as a client may, once registered
    assert bytes(c.lookup("x").read(0, 1)) == b"\2"  # c maps it by b's descriptor, still open


def test_a_cuda_lookup_racing_a_register_here_answers_the_registered_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = FakeCudart(devices=1)
    a, b = (
        CudaWorkersRegistry(
            ShmBook(tmp_path, CudaEntry, KIND), CudaRuntime(lib), 1, max_regions=8, max_bytes=1024
        )
        for _ in range(2)
    )
    a.register("gpu", lib.export(8, fill=b"old")[0], 0, 8)
    handle, address = lib.export(8, fill=b"new")
    opened = CudaWorkersRegistry._open
    registered: list[CudaRegion] = []

    def open_then_registered_again(self: CudaWorkersRegistry, *args: Any, **kwargs: Any) -> CudaRegion:
        region = opened(self, *args, **kwargs)
        monkeypatch.setattr(CudaWorkersRegistry, "_open", opened)
        a.unregister("gpu")
        b.register("gpu", handle, 0, 8)
        registered.append(b._regions["gpu"])
        return region

    monkeypatch.setattr(CudaWorkersRegistry, "_open", open_then_registered_again)
    try:
        found = b.lookup("gpu")
        assert found is registered[0] and bytes(found.read(0, 3)) == b"new"  # b's Register's own
        assert b.lookup("gpu") is found and lib.opens[address] == 1  # kept: the handle opened once
    finally:
        a.close()
        b.close()


def test_a_lookup_racing_an_unregister_only_answers_not_found(
    system: list[WorkersRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _ = system
    a.register("x", "/o", 0, 64)
    adopt = shm_workers.adopt

    def adopt_then_unregistered(*args: Any) -> Any:
        region = adopt(*args)
        a.unregister("x")
        return region

    monkeypatch.setattr(shm_workers, "adopt", adopt_then_unregistered)
    with pytest.raises(RegionNotFound, match="Unable to find shared memory region: 'x'"):
        b.lookup("x")
    assert "x" not in b._regions  # the stale mapping not kept
