"""What the system and the CUDA shared-memory registries share: picking regions by name for
Status and Unregister, and the limits on live mappings (server/protocol/shared_memory.py,
server/backends/cuda_shm.py). Callers hold their own lock around these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from server.errors import RegionNotFound, SharedMemoryLimit


class _Named(Protocol):
    @property
    def name(self) -> str: ...


R = TypeVar("R", bound=_Named)


def pick(regions: Mapping[str, R], name: str, kind: str) -> list[R]:
    """The named region, or every region (by name) when `name` is empty; Triton's text if unknown."""
    if not name:
        return sorted(regions.values(), key=lambda r: r.name)
    region = regions.get(name)
    if region is None:
        raise RegionNotFound(f"Unable to find {kind} shared memory region: '{name}'")
    return [region]


def drop(regions: dict[str, R], name: str) -> list[R]:
    """Remove the named region (every region when `name` is empty); unknown names are fine."""
    if name:
        return [regions.pop(name)] if name in regions else []
    dropped = list(regions.values())
    regions.clear()
    return dropped


def over_limit(
    what: str,
    size: int,
    live: tuple[int, int],
    max_regions: int,
    max_bytes: int,
    regions: str = "regions",
    verb: str = "register",
) -> SharedMemoryLimit | None:
    """Why one more mapping of `size` bytes would pass a limit, given `live` (mappings, bytes);
    None when it fits. `what` names the region in the message ("shared memory region 'x'"), `verb`
    what was refused (a Register, or a worker's first use of a region registered elsewhere)."""
    count, total = live
    if count >= max_regions:
        return SharedMemoryLimit(
            f"cannot {verb} {what}: {count} {regions} are mapped, the most this server maps "
            f"(max_shm_regions={max_regions})"
        )
    if total + size > max_bytes:
        return SharedMemoryLimit(
            f"cannot {verb} {what} of {size} bytes: {total} bytes are mapped and max_shm_bytes is {max_bytes}"
        )
    return None
