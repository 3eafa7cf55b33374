"""Response cache: byte-bounded LRU, keys, read-only owned values, and the config check."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.models.config import ConfigError, parse_config, validate_config, validate_response_cache
from server.models.response_cache import (
    DIGEST_BYTES,
    ENTRY_OVERHEAD,
    OUTPUT_OVERHEAD,
    ResponseCache,
    request_key,
)
from server.protocol import codec


def _key(i: int) -> bytes:
    return request_key("m", "1", {"x": np.array([i], dtype=np.int64)})


def _outputs(nbytes: int, fill: int = 0) -> dict[str, np.ndarray]:
    return {"y": np.full(nbytes, fill, dtype=np.uint8)}


# An entry of one 1-D output, besides its data: its key, the entry, the output and its one dim.
FIXED = DIGEST_BYTES + ENTRY_OVERHEAD + OUTPUT_OVERHEAD + 16
ENTRY = FIXED + 112  # one key and a 100-byte output (held as 112: allocations come in 16 bytes)


# --- LRU bounded in bytes ------------------------------------------------------------------------


def test_size_counts_outputs_and_keys() -> None:
    cache = ResponseCache(10_000)
    assert cache.insert(_key(1), "m", {"a": np.zeros(10, np.float32), "b": np.zeros(3, np.int64)})
    stats = cache.stats()
    # Each output: its dims (16 bytes each) and its data rounded up to 16 bytes (40 -> 48, 24 -> 32).
    assert stats.entries == 1
    assert stats.bytes == DIGEST_BYTES + ENTRY_OVERHEAD + 2 * OUTPUT_OVERHEAD + (16 + 48) + (16 + 32)


def test_least_recently_used_is_evicted_first_and_bytes_stay_bounded() -> None:
    cache = ResponseCache(3 * ENTRY)
    for i in range(3):
        assert cache.insert(_key(i), "m", _outputs(100, i))
    assert cache.stats().bytes == 3 * ENTRY
    assert cache.lookup(_key(0)) is not None  # 0 is now the most recently used; 1 the least
    assert cache.insert(_key(3), "m", _outputs(100, 3))
    assert cache.lookup(_key(1)) is None
    assert all(cache.lookup(_key(i)) is not None for i in (0, 2, 3))
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (3, 3 * ENTRY, 1)
    # A large entry evicts as many old ones as it needs, oldest first: 0 was used after 2 and 3.
    cache.lookup(_key(0))
    assert cache.insert(_key(4), "m", _outputs(200, 4))
    assert cache.lookup(_key(2)) is None and cache.lookup(_key(3)) is None
    assert cache.lookup(_key(0)) is not None and cache.lookup(_key(4)) is not None
    stats = cache.stats()
    assert stats.bytes == 2 * FIXED + 112 + 208 <= stats.capacity_bytes and stats.evictions == 3


def test_entry_larger_than_the_cache_is_not_stored_and_evicts_nothing() -> None:
    cache = ResponseCache(2 * ENTRY)
    assert cache.insert(_key(0), "m", _outputs(100))
    assert not cache.insert(_key(1), "m", _outputs(2 * ENTRY))
    assert cache.lookup(_key(1)) is None
    assert cache.lookup(_key(0)) is not None
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (1, ENTRY, 0)
    exact = ResponseCache(ENTRY)  # an entry exactly the cache's size fits
    assert exact.insert(_key(2), "m", _outputs(100))


def test_hits_and_misses_are_counted() -> None:
    cache = ResponseCache(10_000)
    assert cache.lookup(_key(0)) is None
    cache.insert(_key(0), "m", _outputs(10))
    cache.lookup(_key(0))
    cache.lookup(_key(0))
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (2, 1)


def test_reinserting_a_key_keeps_one_entry() -> None:
    cache = ResponseCache(10_000)
    cache.insert(_key(0), "m", _outputs(10, 1))
    cache.insert(_key(0), "m", _outputs(10, 2))
    assert cache.stats().entries == 1 and cache.stats().bytes == FIXED + 16


def test_discard_model_drops_only_that_models_entries() -> None:
    cache = ResponseCache(10_000)
    a = request_key("a", "1", {"x": np.zeros(1)})
    b = request_key("b", "1", {"x": np.zeros(1)})
    cache.insert(a, "a", _outputs(10))
    cache.insert(b, "b", _outputs(10))
    assert cache.discard_model("a") == 1
    assert cache.lookup(a) is None and cache.lookup(b) is not None
    assert cache.stats().bytes == FIXED + 16


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        ResponseCache(0)


# --- values ------------------------------------------------------------------------------------


def test_values_are_read_only_copies_unaffected_by_the_source() -> None:
    batch = np.arange(12, dtype=np.float32).reshape(4, 3)
    view = batch[1:3]  # what the batcher scatters: a view into the batch's buffer
    cache = ResponseCache(10_000)
    cache.insert(_key(0), "m", {"y": view})
    batch[:] = -1  # the buffer is reused or mutated later
    got = cache.lookup(_key(0))
    assert got is not None
    np.testing.assert_array_equal(got["y"], [[3, 4, 5], [6, 7, 8]])
    assert not got["y"].flags.writeable and got["y"].flags.owndata
    with pytest.raises(ValueError):
        got["y"][0, 0] = 0
    with pytest.raises(TypeError):
        got["z"] = np.zeros(1)  # type: ignore[index]


def test_bytes_outputs_are_stored_and_counted_by_content() -> None:
    words = np.array([b"abc", b"", b"defgh"], dtype=object)
    cache = ResponseCache(10_000)
    cache.insert(_key(0), "m", {"w": words})
    words[0] = b"changed"
    got = cache.lookup(_key(0))
    assert got is not None and got["w"].tolist() == [b"abc", b"", b"defgh"]
    # Objects as allocated (rounded up to 16 bytes) and pointers.
    held = sum(-(-sys.getsizeof(w) // 16) * 16 for w in (b"abc", b"", b"defgh")) + 3 * 8
    assert cache.stats().bytes == FIXED + held


def test_bytes_outputs_are_charged_what_they_hold_in_memory_not_their_wire_size() -> None:
    # 262,144 two-byte strings an entry were charged 6 bytes each (~62 in memory): a 64 MiB cache
    # held ~740 MiB of them.
    words = np.array(["ab"] * 1000, dtype=object)
    cache = ResponseCache(10_000_000)
    cache.insert(_key(0), "m", {"w": words})
    assert cache.stats().bytes - FIXED >= 1000 * (sys.getsizeof("ab") + 8) > 1000 * 50


# --- keys --------------------------------------------------------------------------------------


def test_key_distinguishes_model_version_name_dtype_shape_and_content() -> None:
    x = np.arange(8, dtype=np.int32)
    base = request_key("m", "1", {"x": x})
    assert len(base) == DIGEST_BYTES
    assert request_key("m", "1", {"x": x.copy()}) == base
    others = [
        request_key("n", "1", {"x": x}),
        request_key("m", "2", {"x": x}),
        request_key("m", "1", {"y": x}),
        request_key("m", "1", {"x": x.view(np.float32)}),  # same bytes, another datatype
        request_key("m", "1", {"x": x.view(np.uint32)}),
        request_key("m", "1", {"x": x.reshape(2, 4)}),  # same bytes, another shape
        request_key("m", "1", {"x": x.reshape(4, 2)}),
        request_key("m", "1", {"x": x + 1}),
        request_key("m", "1", {"x": x, "y": x}),
        # Field boundaries are framed: shifting characters between model and version differs.
        request_key("m1", "", {"x": x}),
    ]
    assert len({base, *others}) == len(others) + 1


def test_key_ignores_input_order_and_memory_layout() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([b"x", b"yz"], dtype=object)
    key = request_key("m", "1", {"a": a, "b": b})
    assert request_key("m", "1", {"b": b, "a": a}) == key
    assert request_key("m", "1", {"a": np.asfortranarray(a), "b": b}) == key
    assert request_key("m", "1", {"a": a.astype(">f4"), "b": b}) == key
    assert request_key("m", "1", {"a": a, "b": np.array([b"xy", b"z"], dtype=object)}) != key


def test_raw_and_typed_contents_requests_share_a_key() -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = pb.ModelInferRequest(model_name="m")
    raw.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    raw.inputs.add(name="s", datatype="BYTES", shape=[2])
    raw.raw_input_contents.extend([data.tobytes(), b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"])
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="s", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"a", b"bc"])
    typed.inputs.add(name="x", datatype="FP32", shape=[2, 3]).contents.fp32_contents.extend(
        data.ravel().tolist()
    )
    assert request_key("m", "1", codec.decode_inputs(raw)) == request_key(
        "m", "1", codec.decode_inputs(typed)
    )


# --- config ------------------------------------------------------------------------------------


def test_response_cache_config_is_accepted_and_needs_a_server_cache() -> None:
    config = parse_config("max_batch_size: 4\nresponse_cache { enable: true }\n", "models/m/config.pbtxt")
    validate_config(config, "models/m/config.pbtxt")
    validate_response_cache(config, "models/m/config.pbtxt", 1024)
    with pytest.raises(ConfigError) as err:
        validate_response_cache(config, "models/m/config.pbtxt", 0)
    message = str(err.value)
    assert "models/m/config.pbtxt" in message
    assert "response_cache" in message and "SLUICEWAY_RESPONSE_CACHE_BYTES" in message
    validate_response_cache(mc.ModelConfig(name="m"), "m", 0)  # not enabled: no cache needed


@pytest.mark.parametrize(
    "outputs",
    [
        {"scores": np.ones((1, 2), np.float32)},
        # One element of rank 32, 32 of them: their dims (512 bytes each) had not been counted,
        # and a cache held 4.3x its bound (a tester).
        {f"o{k}": np.full([1] * 32, k, np.float32) for k in range(32)},
        {f"o{k}": np.full([1] * 4, k, np.float32) for k in range(32)},
    ],
    ids=["1x2", "32-outputs-rank-32", "32-outputs-rank-4"],
)
def test_the_python_objects_of_an_entry_are_counted_against_the_capacity(
    outputs: dict[str, np.ndarray],
) -> None:
    """1-row answers had been counted at 24 bytes (key and data) and held about 490 each: a cache
    of 64 MiB of such entries took some 1.3 GB. Within 30% of tracemalloc's own count."""
    import tracemalloc

    cache = ResponseCache(1 << 40)
    keys = [_key(i) for i in range(1000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:
            cache.insert(key, "m", outputs)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    counted = cache.stats().bytes
    assert 0.7 * used <= counted <= 1.3 * used, (counted, used)


def test_a_bf16_input_has_a_key_of_its_own() -> None:
    """BF16 arrays have no buffer format: hashing one failed ("cannot include dtype 'E' in a
    buffer") and every request to a cached BF16 model was INTERNAL."""
    import ml_dtypes

    x = np.array([[1.0, -0.0, 2.5]], dtype=ml_dtypes.bfloat16)
    key = request_key("m", "1", {"x": x})
    assert key == request_key("m", "1", {"x": x.copy()})
    assert key != request_key("m", "1", {"x": x.view(np.float16)})  # same bytes, another type
    assert key != request_key("m", "1", {"x": x + 1})


def test_an_answer_computed_across_a_discard_of_its_model_is_not_stored() -> None:
    """An ensemble request running while its step was reloaded stored the old step's answer after
    the reload discarded the ensemble's entries, and every repeat got it (a tester: 10, 10, 10
    where the reloaded step gave 15)."""
    cache = ResponseCache(10_000)
    before = cache.generation("ens")
    cache.discard_model("ens")  # a step below it reloaded while the request ran
    assert not cache.insert(_key(1), "ens", {"y": np.ones(2, np.float32)}, before)
    assert cache.lookup(_key(1)) is None
    now = cache.generation("ens")
    assert now == before + 1 and cache.generation("other") == now  # one count for every model
    assert cache.insert(_key(1), "ens", {"y": np.ones(2, np.float32)}, now)
    assert cache.lookup(_key(1)) is not None


def test_discards_keep_nothing_per_model_name() -> None:
    """A count per model had kept an entry for every name ever unloaded or reloaded, cached or not,
    for the server's life: a client loading models under new names grew it without bound (a
    tester, session 55: 10,000 names, +0.82 MB)."""
    cache = ResponseCache(10_000)
    assert cache.insert(_key(1), "kept", {"y": np.ones(2, np.float32)}, cache.generation("kept"))
    for k in range(1000):
        cache.discard_model(f"model-{k}")
    assert vars(cache).keys() == ResponseCache(10_000).__dict__.keys()  # no attribute added
    assert all(len(v) <= 1 for v in vars(cache).values() if isinstance(v, dict))  # "kept"'s entry only
    assert cache.lookup(_key(1)) is not None  # other models' discards leave its entry
