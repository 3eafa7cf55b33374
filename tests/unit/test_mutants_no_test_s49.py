"""Three functions that only the integration tests' servers reached, so mutmut found no test of
them (tests/MUTANTS.md, "forty-ninth session"): the codec's BYTES unpacking, a cache hit's
counts, and a poll's hurried retries."""

from __future__ import annotations

import struct

import pytest

from batcher.stats import ModelStats
from server.errors import InvalidRequest
from server.models.load_retry import LoadRetries
from server.protocol.codec import unpack_bytes


def _packed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_unpack_bytes_returns_each_element_in_order() -> None:
    got = unpack_bytes("text", _packed(b"ab", b"", b"xyz"), 3)
    assert got.dtype == object
    assert got.tolist() == [b"ab", b"", b"xyz"]


def test_unpack_bytes_names_the_input_and_the_wire_fault() -> None:
    with pytest.raises(InvalidRequest) as caught:
        unpack_bytes("text", _packed(b"ab") + b"!", 1)
    assert str(caught.value) == "input 'text': 1 bytes left after 1 BYTES elements"


def test_a_cache_hit_counts_once_with_its_time_and_a_queue_entry_of_no_wait() -> None:
    stats = ModelStats()
    stats.record_cache_hit(1234)
    stats.record_cache_hit(6)
    assert (stats.cache_hit.count, stats.cache_hit.ns) == (2, 1240)
    assert (stats.queue.count, stats.queue.ns) == (2, 0)
    assert (stats.success.count, stats.inference_count, stats.execution_count) == (0, 0, 0)


def test_hurry_makes_only_waiting_names_due_at_once() -> None:
    retries = LoadRetries(first_s=30.0)
    retries.failed("a", now=100.0)
    retries.failed("b", now=100.0)
    retries.hurry({"a", "never_failed"})
    assert retries.due(now=100.0) == {"a"}  # b still waits its 30 s; the other was never due
    assert retries.due(now=129.9) == set()
    assert retries.due(now=130.0) == {"b"}
    assert retries.failures("a") == 1  # hurried, not forgotten: the next failure waits longer
    assert retries.failed("a", now=200.0).delay_s == 60.0


def test_hurry_reaches_a_name_due_any_time_later() -> None:
    retries = LoadRetries(first_s=1.0, max_s=1.0)
    retries.failed("m", now=1e18)
    retries.hurry({"m"})
    assert retries.due(now=-1e300) == {"m"}
