"""Triton's response cache: one server-wide LRU of model outputs, bounded in bytes.

Models opt in with `response_cache { enable: true }`; every such model shares the one cache the
server factory builds (its size is `response_cache_bytes`). A key is a digest of the model name,
version and every input's name, datatype, shape and content, so it matches exact inputs only,
whichever wire form (raw or typed `contents`) carried them. A value holds every output of the
model as read-only copies that own their memory; the requested-outputs selection is applied when
the answer is encoded. Not thread-safe on purpose: only the event loop uses it.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from batcher.types import Array
from protos import wire

DIGEST_BYTES = 16
# A BYTES element is charged what it holds in memory: its Python object (sys.getsizeof: 33 bytes
# of header for bytes, 49-74 for str) and the array's pointer to it. Charged its content and a
# 4-byte prefix, 262,144 two-byte strings an entry were charged a tenth of their memory, and a
# 64 MiB cache held ~740 MiB.
_POINTER_BYTES = 8


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of the cache's counters."""

    entries: int
    bytes: int
    capacity_bytes: int
    hits: int
    misses: int
    evictions: int


@dataclass(frozen=True, slots=True)
class _Entry:
    model: str
    outputs: Mapping[str, Array]
    size: int


def _frame(digest: hashlib.blake2b, data: bytes | Array) -> None:
    """Length-prefixed, so that no two sequences of fields hash the same bytes."""
    if isinstance(data, bytes):
        digest.update(struct.pack("<Q", len(data)))
        digest.update(data)
    else:  # a C-contiguous array, hashed in place as bytes (BF16 has no buffer format)
        digest.update(struct.pack("<Q", data.nbytes))
        digest.update(data.reshape(-1).view(np.uint8))


def request_key(model: str, version: str, inputs: Mapping[str, Array]) -> bytes:
    """The cache key of a request: model, version and each input's name, datatype, shape and bytes.

    Order-independent over input names; equal bytes under another shape or datatype differ.
    """
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    _frame(digest, model.encode())
    _frame(digest, version.encode())
    digest.update(struct.pack("<Q", len(inputs)))
    for name in sorted(inputs):
        array = inputs[name]
        _frame(digest, name.encode())
        data: bytes | Array
        if array.dtype.kind in "OSU":
            _frame(digest, b"BYTES")
            data = wire.pack_bytes(array)
        else:
            little = array.dtype.newbyteorder("<")
            # BF16's str is "<V2", which says nothing of the type: its name too.
            _frame(digest, (little.str + little.name if little.kind == "V" else little.str).encode())
            data = np.ascontiguousarray(array, dtype=little)  # a copy only when not already so
        _frame(digest, struct.pack(f"<{array.ndim}q", *array.shape))
        _frame(digest, data)
    return digest.digest()


def _owned_copy(array: Array) -> Array:
    copy = np.array(array, copy=True, order="C")
    copy.flags.writeable = False
    return copy


# Python's own memory per entry, beyond the key and the outputs' data, measured with tracemalloc on
# CPython 3.13: the entry, its read-only mapping and dict, the key object and the OrderedDict node,
# and per output its array header and dict slot. Without them a cache of 1-row answers held 20x its
# `response_cache_bytes` (24 bytes counted per entry, about 490 used).
ENTRY_OVERHEAD = 352
OUTPUT_OVERHEAD = 128


_DIM_BYTES = 16  # numpy's shape and stride of each dim, an allocation beside the array's header
_GRANULE = 16  # what allocators hand out: sizes rounded up to it (b"xx" is 35 bytes, holds 48)


def _size(array: Array) -> int:
    """An output's memory besides OUTPUT_OVERHEAD: its dims and data, rounded as allocated. One
    element of rank 32 held 620 bytes charged 132 (its dims, 512 bytes, were not counted): 4.3x a
    cache's bound in memory, a tester's run."""
    dims = _DIM_BYTES * array.ndim
    if array.dtype.kind == "O":
        items: list[bytes | str] = array.ravel().tolist()
        return dims + sum(_rounded(sys.getsizeof(item)) for item in items) + _POINTER_BYTES * len(items)
    return dims + _rounded(int(array.nbytes))


def _rounded(size: int) -> int:
    return -(-size // _GRANULE) * _GRANULE


class ResponseCache:
    """An LRU of model outputs, bounded by the sum of the outputs' bytes and the keys' sizes."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        self._capacity = capacity_bytes
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        # How many discards there were, of any model's entries: an answer computed across one (an
        # ensemble's, its step reloaded while it ran) is not stored (`insert`'s `generation`). One
        # count for all: a count per model kept an entry for every name ever unloaded (a client may
        # load any names), and a discard is rare enough that the few answers left unstored do not
        # matter (a tester, session 55).
        self._discards = 0

    @property
    def capacity_bytes(self) -> int:
        """The most bytes (outputs plus keys) the cache holds."""
        return self._capacity

    def lookup(self, key: bytes) -> Mapping[str, Array] | None:
        """The cached outputs for `key` (read-only arrays), marked most recently used; None on a miss."""
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return entry.outputs

    def generation(self, model: str) -> int:
        """How many discards there were so far, `model`'s or another's (read at lookup, for `insert`)."""
        return self._discards

    def insert(
        self, key: bytes, model: str, outputs: Mapping[str, Array], generation: int | None = None
    ) -> bool:
        """Store read-only copies of `outputs` under `key`, evicting the least recently used entries.

        Returns False, storing nothing, when the entry alone is larger than the whole cache, or
        when `model`'s entries were discarded since `generation` was read (an ensemble's answer
        computed by a step version since replaced had been stored, and answered every repeat). An
        existing entry for `key` is kept (same inputs, same model version: same outputs).
        """
        if generation is not None and generation != self.generation(model):
            return False
        if key in self._entries:
            self._entries.move_to_end(key)
            return True
        size = len(key) + ENTRY_OVERHEAD + sum(_size(a) + OUTPUT_OVERHEAD for a in outputs.values())
        if size > self._capacity:
            return False
        copies = MappingProxyType({name: _owned_copy(a) for name, a in outputs.items()})
        while self._bytes + size > self._capacity:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.size
            self._evictions += 1
        self._entries[key] = _Entry(model, copies, size)
        self._bytes += size
        return True

    def discard_model(self, model: str) -> int:
        """Drop every entry of `model` (on reload or unload); returns how many were dropped."""
        self._discards += 1
        stale = [key for key, entry in self._entries.items() if entry.model == model]
        for key in stale:
            self._bytes -= self._entries.pop(key).size
        return len(stale)

    def stats(self) -> CacheStats:
        """Entries, bytes held, capacity, and hits, misses and evictions since start."""
        return CacheStats(
            entries=len(self._entries),
            bytes=self._bytes,
            capacity_bytes=self._capacity,
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
        )
