"""Mutants of server/protocol/shm_tensors.py that survived the whole-scope run of 2026-12-05
(tests/MUTANTS.md, forty-eighth session): the BYTES input limit at exactly its size, an unread
BYTES stand-in's elements, the room refusal's text, and which outputs check_fixed_outputs checks
and with what size. Regions are real ones over objects in a temporary directory (sparse where
they are large)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from server import datatypes
from server.errors import InvalidRequest
from server.protocol.shm_regions import open_region
from server.protocol.shm_tensors import MAX_SHM_BYTES_INPUT, ShmSlice, ShmTensors
from server.protocol.validate import TensorSpec

FP32, FP64 = datatypes.BY_WIRE["FP32"], datatypes.BY_WIRE["FP64"]


def sliced(directory: Path, byte_size: int, name: str = "r") -> ShmSlice:
    """A region `name` over a fresh object of `byte_size` bytes (sparse), whole."""
    path = directory / name
    path.write_bytes(b"")
    os.truncate(path, byte_size)
    return ShmSlice(open_region(name, "/" + name, 0, byte_size, directory), 0, byte_size)


def outputs(directory: Path, byte_size: int, name: str = "y") -> ShmTensors:
    return ShmTensors({}, {name: sliced(directory, byte_size)})


def test_a_bytes_input_of_exactly_the_limit_is_taken_and_one_byte_more_refused(tmp_path: Path) -> None:
    """`>` not `>=`: 64 MiB is the most, itself allowed; the refusal's text says BYTES (the wire
    name), not 'bytes'."""
    at = ShmTensors({"s": sliced(tmp_path, MAX_SHM_BYTES_INPUT, "at")}, {})
    assert at.unread("s", datatypes.BYTES, (2,)).shape == (2,)
    over = ShmTensors({"s": sliced(tmp_path, MAX_SHM_BYTES_INPUT + 1, "over")}, {})
    with pytest.raises(InvalidRequest) as refused:
        over.unread("s", datatypes.BYTES, (2,))
    assert str(refused.value) == (
        f"input 's': shared_memory_byte_size {MAX_SHM_BYTES_INPUT + 1} is over {MAX_SHM_BYTES_INPUT} "
        "bytes, the most a BYTES input in shared memory may hold"
    )


def test_an_unread_bytes_input_is_empty_strings(tmp_path: Path) -> None:
    """The stand-in's elements are b"" (bytes, as a read input's are), not None or other bytes:
    checks before the read may look at them."""
    shm = ShmTensors({"s": sliced(tmp_path, 16)}, {})
    assert shm.unread("s", datatypes.BYTES, (2, 3)).tolist() == [[b""] * 3] * 2


def test_an_output_too_large_for_its_region_is_refused_without_the_strings_note(tmp_path: Path) -> None:
    """A computed output's size is known: no 'plus the strings themselves' (that is for a BYTES
    output's lengths before the run), nor anything else after the byte count."""
    shm = outputs(tmp_path, 4)
    with pytest.raises(InvalidRequest) as refused:
        shm.write("y", np.ones(2, np.float32))
    assert str(refused.value) == (
        "shared memory size specified with the request for output 'y' (4 bytes) should be at least "
        "8 bytes to hold the results (region 'r')"
    )


def test_outputs_without_a_spec_or_not_in_shared_memory_are_skipped(tmp_path: Path) -> None:
    """Only an output both in shared memory and in the specs is checked: an unknown one (no spec)
    and one answered on the wire (no region) are passed over, and the names after them are still
    checked (`continue`, not `break`)."""
    shm = outputs(tmp_path, 8)
    specs = {"y": TensorSpec("y", FP32, (4,)), "z": TensorSpec("z", FP32, (100,))}
    with pytest.raises(InvalidRequest, match=r"output 'y' \(8 bytes\) should be at least 16 bytes"):
        shm.check_fixed_outputs(specs, ["unknown", "z", "y"], None)
    shm.check_fixed_outputs({"z": specs["z"]}, ["y", "z"], None)  # y has no spec, z no region


def test_a_dimension_of_one_is_fixed_and_two_variable_ones_are_not(tmp_path: Path) -> None:
    """Only -1 is variable: a dimension of 1 is checked, and (-1, -1), whose product is positive,
    is skipped rather than taken as 1 element."""
    small = outputs(tmp_path, 2)
    with pytest.raises(InvalidRequest, match="should be at least 8 bytes"):
        small.check_fixed_outputs({"y": TensorSpec("y", FP32, (1, 2))}, ["y"], None)
    small.check_fixed_outputs({"y": TensorSpec("y", FP32, (-1, -1))}, ["y"], None)


def test_a_fixed_outputs_size_counts_rows_only_when_the_model_batches(tmp_path: Path) -> None:
    """`rows` None: the spec's shape alone (not (None, *dims)); else rows times it."""
    shm = outputs(tmp_path, 16)
    specs = {"y": TensorSpec("y", FP32, (4,))}
    shm.check_fixed_outputs(specs, ["y"], None)  # 16 bytes: fits
    with pytest.raises(InvalidRequest, match="should be at least 48 bytes to hold"):
        shm.check_fixed_outputs(specs, ["y"], 3)


def test_a_fixed_outputs_size_is_its_elements_times_their_width(tmp_path: Path) -> None:
    """FP64 takes 8 bytes an element, not the 4 a BYTES element's length takes."""
    shm = outputs(tmp_path, 8)
    with pytest.raises(InvalidRequest) as refused:
        shm.check_fixed_outputs({"y": TensorSpec("y", FP64, (2,))}, ["y"], None)
    assert "should be at least 16 bytes to hold" in str(refused.value)
    shm.check_fixed_outputs({"y": TensorSpec("y", FP32, (2,))}, ["y"], None)
