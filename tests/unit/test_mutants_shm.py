"""System shared memory where mutation testing showed rules untested (server/protocol/shm_tensors.py,
shared_memory.py, shm_regions.py): each refusal's whole message (naming the tensor, the parameter
or the region), a range exactly at a region's end and one byte past it, uint64 parameters, the
offset honoured, BYTES tensors both ways, an input copied at an unaligned address, the
registry's counts and its retry after a collection, and keys and sizes at their bounds."""

from __future__ import annotations

import errno
import gc
import os
import random
from pathlib import Path

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import wire
from server import datatypes
from server.errors import InvalidRequest, RegionExists, RegionNotFound, SharedMemoryLimit
from server.protocol import shared_memory, shm_tensors
from server.protocol.shm_regions import NAME_MAX, object_name
from tests.unit.test_shared_memory import obj, registry

FP32 = datatypes.BY_WIRE["FP32"]
BYTES = datatypes.BY_WIRE["BYTES"]
Params = dict[str, pb.InferParameter]


def params(region: str | None = "r", size: int | None = 8, offset: int | None = None) -> Params:
    out: Params = {}
    if region is not None:
        out["shared_memory_region"] = pb.InferParameter(string_param=region)
    if size is not None:
        out["shared_memory_byte_size"] = pb.InferParameter(int64_param=size)
    if offset is not None:
        out["shared_memory_offset"] = pb.InferParameter(int64_param=offset)
    return out


def input_request(p: Params, name: str = "x", **fields: object) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, parameters=p, **fields)  # type: ignore[arg-type]
    return pb.ModelInferRequest(model_name="m", inputs=[tensor])


def output_request(p: Params, name: str = "y") -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferRequestedOutputTensor(name=name, parameters=p)
    return pb.ModelInferRequest(model_name="m", outputs=[tensor])


def refusal(request: pb.ModelInferRequest, tmp_path: Path) -> str:
    shm = registry(tmp_path)
    shm.register("r", obj(tmp_path, "o", bytes(64)), 0, 64)
    with pytest.raises(InvalidRequest) as refused:
        shm_tensors.resolve(request, shm)
    return str(refused.value)


# --- shm_tensors: the parameters ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            input_request(params(None, None, 4)),
            "'shared_memory_offset' can not be specified without 'shared_memory_region' parameter "
            "for input 'x'",
        ),
        (
            output_request(params(None, 8)),
            "'shared_memory_byte_size' can not be specified without 'shared_memory_region' parameter "
            "for output 'y'",
        ),
        (
            input_request({"shared_memory_region": pb.InferParameter(int64_param=1)}),
            "invalid value type for 'shared_memory_region' parameter for input 'x', expected string_param",
        ),
        (
            output_request(params("r", None)),
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter "
            "for output 'y'",
        ),
        (
            input_request({**params(), "shared_memory_byte_size": pb.InferParameter(string_param="8")}),
            "invalid value type for 'shared_memory_byte_size' parameter for input 'x', expected int64_param",
        ),
        (
            output_request({**params(), "shared_memory_offset": pb.InferParameter(bool_param=True)}),
            "invalid value type for 'shared_memory_offset' parameter for output 'y', expected int64_param",
        ),
        (input_request(params("r", -1)), "input 'x': 'shared_memory_byte_size' must be >= 0, got -1"),
        (output_request(params("r", 8, -2)), "output 'y': 'shared_memory_offset' must be >= 0, got -2"),
        (
            input_request(params("r", 8, 57)),
            "input 'x': shared_memory_offset 57 + shared_memory_byte_size 8 is beyond region 'r' (64 bytes)",
        ),
        (
            output_request(params("r", 65)),
            "output 'y': shared_memory_offset 0 + shared_memory_byte_size 65 is beyond region 'r' (64 bytes)",
        ),
        (
            input_request(params(), contents=pb.InferTensorContents(fp32_contents=[1.0])),
            "unexpected 'content' provided when using shared memory for input tensor 'x' for model 'm'",
        ),
        (
            output_request({**params(), "classification": pb.InferParameter(int64_param=2)}),
            "output 'y' can't set both 'shared_memory_region' and 'classification'",
        ),
    ],
)
def test_each_refusal_names_the_tensor_and_the_parameter(
    request_: pb.ModelInferRequest, message: str, tmp_path: Path
) -> None:
    assert refusal(request_, tmp_path) == message


def test_a_range_ending_at_the_regions_end_is_taken_and_uint64_parameters_too(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    data = np.arange(16, dtype=np.float32)
    shm.register("r", obj(tmp_path, "o", data.tobytes()), 0, 64)
    p = {
        "shared_memory_region": pb.InferParameter(string_param="r"),
        "shared_memory_byte_size": pb.InferParameter(uint64_param=16),
        "shared_memory_offset": pb.InferParameter(uint64_param=48),
    }
    tensors = shm_tensors.resolve(input_request(p), shm)
    assert tensors is not None
    assert tensors.read("x", FP32, (4,)).tolist() == [12, 13, 14, 15]  # the offset is used


def test_tensors_without_shared_memory_parameters_are_left_alone(tmp_path: Path) -> None:
    other = {"binary_data_size": pb.InferParameter(int64_param=8)}
    request = input_request(other)
    request.outputs.add(name="y", parameters=other)
    assert shm_tensors.resolve(request, registry(tmp_path)) is None
    assert not shm_tensors.uses_shared_memory(request)
    assert shm_tensors.uses_shared_memory(input_request(params()))
    assert shm_tensors.uses_shared_memory(output_request(params()))
    assert not shm_tensors.uses_shared_memory(
        pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor()])
    )


# --- shm_tensors: reading and writing -----------------------------------------------------------


def test_bytes_inputs_are_read_in_their_shape_and_bad_framing_names_the_input(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    framed = wire.pack_bytes(np.array([b"ab", b"", b"xyz", b"q"], dtype=object))
    shm.register("r", obj(tmp_path, "o", framed + bytes(8)), 0, len(framed) + 8)
    tensors = shm_tensors.resolve(input_request(params("r", len(framed))), shm)
    assert tensors is not None
    value = tensors.read("x", BYTES, (2, 2))
    assert value.shape == (2, 2) and value.tolist() == [[b"ab", b""], [b"xyz", b"q"]]
    with pytest.raises(InvalidRequest) as refused:
        tensors.read("x", BYTES, (5,))
    assert str(refused.value).startswith("input 'x': ")


def test_an_input_at_an_unaligned_address_is_a_copy(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    values = np.arange(4, dtype=np.float32)
    key = obj(tmp_path, "o", b"\0" + values.tobytes() + bytes(3))
    shm.register("r", key, 0, 20)
    tensors = shm_tensors.resolve(input_request(params("r", 16, 1)), shm)
    assert tensors is not None
    read = tensors.read("x", FP32, (4,))
    shm.lookup("r").write(1, np.zeros(16, np.uint8))  # the client changes the region afterwards
    assert read.tolist() == [0, 1, 2, 3] and not read.flags.writeable


def test_bytes_and_two_dimensional_outputs_are_written_whole(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    shm.register("r", obj(tmp_path, "o", bytes(64)), 0, 64)
    request = output_request(params("r", 32))
    request.outputs.add(name="z", parameters=params("r", 24, 32))
    tensors = shm_tensors.resolve(request, shm)
    assert tensors is not None
    text = np.array([[b"hi"], [b"there"]], dtype=object)
    tensors.write("y", text)
    grid = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensors.write("z", grid)
    raw = (tmp_path / "o").read_bytes()
    framed = wire.pack_bytes(text)
    assert raw[: len(framed)] == framed
    assert raw[32:56] == grid.tobytes()


# --- the registry -------------------------------------------------------------------------------


def test_the_registry_counts_forgets_and_says_what_it_cannot_find(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    with pytest.raises(InvalidRequest) as refused:
        shm.register("", obj(tmp_path, "o", bytes(8192)), 0, 8)
    assert str(refused.value) == "cannot register a shared memory region without a name"
    shm.register("a", "/o", 0, 8)
    shm.register("b", "/o", 0, 4096)
    assert shm.live_mappings == (2, 8 + 4096) and shm.has("a") and not shm.has("c")  # bytes mapped
    with pytest.raises(RegionNotFound) as missing:
        shm.status("c")
    assert str(missing.value) == "Unable to find system shared memory region: 'c'"
    with pytest.raises(RegionNotFound) as missing:
        shm.lookup("c")
    assert str(missing.value) == "Unable to find shared memory region: 'c'"
    shm.unregister("a")
    assert [r.name for r in shm.status("")] == ["b"]
    shm.close()
    assert shm.status("") == [] and not shm.has("b")
    gc.collect()
    assert shm.live_mappings == (0, 0)


def test_a_mapping_held_by_a_cycle_is_collected_before_a_registration_is_refused(tmp_path: Path) -> None:
    shm = registry(tmp_path, max_regions=1)
    shm.register("a", obj(tmp_path, "o", bytes(64)), 0, 64)
    cycle: list[object] = [shm.lookup("a")]
    cycle.append(cycle)  # as a failed request's traceback can hold its region
    del cycle
    shm.unregister("a")
    shm.register("b", "/o", 0, 64)  # the limit's one mapping was only the cycle's
    assert [r.name for r in shm.status("")] == ["b"]


def test_a_registration_beside_a_mapping_still_in_use_is_counted_once(tmp_path: Path) -> None:
    shm = registry(tmp_path, max_regions=2)
    shm.register("a", obj(tmp_path, "o", bytes(64)), 0, 64)
    held = shm.lookup("a")  # a request in flight
    shm.unregister("a")
    shm.register("b", "/o", 0, 64)  # within the limit with the held mapping: registered once
    assert [r.name for r in shm.status("")] == ["b"] and shm.live_mappings[0] == 2
    del held


def test_a_region_at_an_unaligned_offset_past_the_first_page_reads_its_own_bytes(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(3 * 4096)
    shm = registry(tmp_path)
    shm.register("a", obj(tmp_path, "o", data), 5000, 100)
    assert bytes(shm.lookup("a").read(0, 100)) == data[5000:5100]


# --- keys and sizes -----------------------------------------------------------------------------


def test_a_key_of_the_longest_name_is_taken_and_one_byte_more_refused() -> None:
    assert object_name("/" + "k" * NAME_MAX) == "k" * NAME_MAX
    with pytest.raises(InvalidRequest) as refused:
        object_name("k" * (NAME_MAX + 1))
    assert str(refused.value) == f"invalid shm key: longer than {NAME_MAX} bytes"


def test_a_bad_key_is_quoted_up_to_300_characters() -> None:
    key = "a/" + "b" * 400
    with pytest.raises(InvalidRequest) as refused:
        object_name(key)
    assert str(refused.value) == (
        f"invalid shm key '{key[:300]}': a POSIX shared-memory name is one path component "
        "(an optional leading '/', then no '/', NUL, '.' or '..')"
    )


def test_sizes_and_missing_objects_are_refused_naming_the_region(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    key = obj(tmp_path, "o", bytes(16))
    shm.register("one", key, 0, 1)  # a one-byte region is a region
    with pytest.raises(InvalidRequest) as refused:
        shm.register("zero", key, 0, 0)
    assert str(refused.value) == "failed to register shared memory region 'zero': byte_size must be > 0"
    with pytest.raises(InvalidRequest) as refused:
        shm.register("gone", "/nothing-here", 0, 8)
    assert str(refused.value) == "Unable to open shared memory region: '/nothing-here' (no such object)"


def test_a_key_may_begin_with_any_character_but_a_slash() -> None:
    assert object_name("/Xa") == "Xa" and object_name("XXy") == "XXy"


def test_a_region_registered_meanwhile_by_another_call_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shm = registry(tmp_path)
    key = obj(tmp_path, "o", bytes(64))
    real_open = shared_memory.open_region

    def racing_open(name: str, *args: object, **kwargs: object) -> object:
        monkeypatch.setattr(shared_memory, "open_region", real_open)
        shm.register(name, key, 0, 8)  # another call, between this one's check and its admission
        return real_open(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shared_memory, "open_region", racing_open)
    with pytest.raises(RegionExists) as refused:
        shm.register("a", key, 0, 8)
    assert str(refused.value) == "shared memory region 'a' already in manager"
    gc.collect()
    assert shm.live_mappings == (1, 8)  # the loser's mapping was closed, not counted


def test_the_region_limit_names_the_region_refused(tmp_path: Path) -> None:
    shm = registry(tmp_path, max_regions=1)
    shm.register("a", obj(tmp_path, "o", bytes(64)), 0, 64)
    with pytest.raises(SharedMemoryLimit) as refused:
        shm.register("b", "/o", 0, 64)
    assert str(refused.value) == (
        "cannot register shared memory region 'b': 1 regions are mapped, the most this server maps "
        "(max_shm_regions=1)"
    )


def swapped_lstat(monkeypatch: pytest.MonkeyPatch, path: Path, decoy: Path) -> None:
    """os.lstat of `path` answers for `decoy`: the object was swapped between the check and the open."""
    real = os.lstat

    def lstat(p: object, *args: object, **kwargs: object) -> os.stat_result:
        return real(decoy) if Path(str(p)) == path else real(p, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", lstat)


def test_a_symlink_swapped_in_after_the_check_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shm = registry(tmp_path)
    (tmp_path / "target").write_bytes(bytes(64))
    (tmp_path / "decoy").write_bytes(bytes(64))
    (tmp_path / "link").symlink_to(tmp_path / "target")
    swapped_lstat(monkeypatch, tmp_path / "link", tmp_path / "decoy")
    with pytest.raises(InvalidRequest) as refused:
        shm.register("r", "/link", 0, 8)
    assert str(refused.value) == (
        f"Unable to open shared memory region: '/link' ({os.strerror(errno.ELOOP)})"
    )


def test_an_object_replaced_after_the_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shm = registry(tmp_path)
    (tmp_path / "o").write_bytes(bytes(64))
    (tmp_path / "decoy").write_bytes(bytes(64))
    swapped_lstat(monkeypatch, tmp_path / "o", tmp_path / "decoy")
    with pytest.raises(InvalidRequest) as refused:
        shm.register("r", "/o", 0, 8)
    assert str(refused.value) == "Unable to open shared memory region: '/o' changed while it was opened"
    assert shm.status("") == []


def test_an_object_the_server_may_not_open_says_permission_denied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shm = registry(tmp_path)
    key = obj(tmp_path, "o", bytes(64))

    def denied(*args: object, **kwargs: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")  # what a non-root server meets

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(InvalidRequest) as refused:
        shm.register("r", key, 0, 8)
    assert str(refused.value) == "Unable to open shared memory region: '/o' (permission denied)"


def test_an_inputs_size_is_checked_before_a_byte_of_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 100-byte request of shape [1] naming a whole sparse 1 GiB region had the server allocate
    and read it all (2-4 s on the event loop, 1.2 GB) before refusing it (a tester)."""
    size = 1 << 30
    (tmp_path / "o").touch()
    os.truncate(tmp_path / "o", size)  # sparse: the client spends nothing
    shm = registry(tmp_path, max_bytes=2 * size)
    shm.register("r", "/o", 0, size)
    region = shm.lookup("r")
    reads: list[int] = []
    monkeypatch.setattr(region, "read", lambda offset, n: reads.append(n))
    tensors = shm_tensors.resolve(input_request(params("r", size)), shm)
    assert tensors is not None
    with pytest.raises(InvalidRequest, match=f"shared_memory_byte_size is {size}, expected 4"):
        tensors.read("x", FP32, (1,))
    with pytest.raises(InvalidRequest, match=f"over {shm_tensors.MAX_SHM_BYTES_INPUT} bytes"):
        tensors.read("x", BYTES, (1,))  # strings are parsed one by one: bounded
    assert reads == []
