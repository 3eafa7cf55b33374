"""A warm-up sample's `input_data_file` holding one row, under `batch_size` > 1: Triton's warm-up
reads one sample from it and gives it to each row; here the load had failed ("has 256 bytes,
expected 1024": a tester, session 49). A file of every row's data still serves as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server import datatypes
from server.models.config_errors import ConfigError
from server.models.warmup import _file_array
from server.protocol.codec import raw_bytes

FP32 = datatypes.BY_WIRE["FP32"]


def _read(directory: Path, data: bytes, rows: int, dtype: datatypes.Datatype = FP32) -> np.ndarray:
    (directory / "warmup").mkdir(exist_ok=True)
    (directory / "warmup" / "feat").write_bytes(data)
    where = "sample 'w': input 'x': input_data_file 'feat'"
    return _file_array("feat", dtype, (rows, 2, 2), directory, "warmup/feat", where, 1 << 20, rows)


def test_one_rows_data_is_given_to_each_row(tmp_path: Path) -> None:
    one = np.arange(4, dtype=np.float32)
    got = _read(tmp_path, one.tobytes(), rows=3)
    assert got.shape == (3, 2, 2) and got.tolist() == [one.reshape(2, 2).tolist()] * 3


def test_every_rows_data_is_taken_as_it_is(tmp_path: Path) -> None:
    whole = np.arange(12, dtype=np.float32)
    assert _read(tmp_path, whole.tobytes(), rows=3).ravel().tolist() == whole.tolist()


def test_other_sizes_are_refused_naming_both(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _read(tmp_path, b"\0" * 20, rows=3)
    assert str(caught.value) == (
        "sample 'w': input 'x': input_data_file 'feat' has 20 bytes, expected 16 (one row) or 48 (all 3 rows)"
    )
    with pytest.raises(ConfigError, match=r"has 20 bytes, expected 16$"):
        _read(tmp_path, b"\0" * 20, rows=1)


def test_strings_of_one_row_are_given_to_each_row(tmp_path: Path) -> None:
    one = np.array([b"a", b"bc", b"", b"d"], dtype=object)
    got = _read(tmp_path, raw_bytes(one), rows=2, dtype=datatypes.BY_WIRE["BYTES"])
    assert got.shape == (2, 2, 2) and got.reshape(2, 4).tolist() == [one.tolist()] * 2
