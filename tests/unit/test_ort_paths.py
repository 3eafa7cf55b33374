"""ONNX models under a directory whose name is not UTF-8 (server/backends/ort_paths.py).

onnxruntime takes UTF-8 paths only: such a model had failed to load with pybind's "__init__():
incompatible constructor arguments" (an identity model beside it, read by Python, loaded). It
loads now from /proc/self/fd/N/<file>, N the model directory's descriptor, external data files
beside it too; where no such path can be had, the load says what is wrong with the path."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import server.backends.ort_paths
from server.backends.onnxruntime_backend import CPU, BackendLoadError, OrtBackend, OrtOptions
from server.backends.ort_paths import NotUtf8Path, onnxruntime_path
from tests.support.division_models import external_data_div
from tests.unit.test_ort_backend import _dense_model

NOT_UTF8 = os.fsdecode(b"bad\xffbytes")  # as Python lists such a directory: a surrogate, '\udcff'


def _backend(path: Path, **options: bool) -> OrtBackend:
    executor = ThreadPoolExecutor(max_workers=1)
    return OrtBackend(path, OrtOptions(**options), [(CPU, {})], executor, model_name="m")  # type: ignore[arg-type]


def _open_under(root: Path) -> list[str]:
    """This process's descriptors open on `root` or anything under it (only those: another test's
    thread in this process may open or close files of its own meanwhile)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # (the listing's own descriptor, closed meanwhile)
        if target == str(root) or target.startswith(f"{root}/"):
            found.append(target)
    return found


def test_a_model_under_a_directory_that_is_not_utf8_loads_and_runs(tmp_path: Path) -> None:
    path = _dense_model(tmp_path / NOT_UTF8 / "m" / "1" / "model.onnx")
    backend = _backend(path)
    try:
        x = np.ones((2, 8), np.float32)
        got = backend.run_blocking({"x": x})
    finally:
        backend.close()
    assert _open_under(tmp_path / NOT_UTF8) == []  # its descriptor closed once the session is made
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(path.read_bytes())
    y, z = ort.InferenceSession(str(copy), providers=[CPU]).run(None, {"x": x})
    np.testing.assert_array_equal(got["y"], y)
    np.testing.assert_array_equal(got["z"], z)


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded: bytes", "unguarded: the file"])
def test_external_data_beside_such_a_model_is_read(tmp_path: Path, guarded: bool) -> None:
    """Guarded, onnxruntime gets the model's bytes and the folder of its data in the session's
    options; unguarded, the file, its data found beside it: both through the descriptor's path."""
    # (onnx itself cannot write external data there either: written elsewhere, then moved)
    written = external_data_div(tmp_path / "written" / "ext" / "m.onnx")
    (tmp_path / "written").rename(tmp_path / NOT_UTF8)
    path = tmp_path / NOT_UTF8 / "ext" / written.name
    backend = _backend(path, int_division_guard=guarded)
    try:
        good = {"x": np.asarray([7, -9, 100], np.int32), "y": np.asarray([2, 4, -7], np.int32)}
        assert backend.run_blocking(good)["q"].tolist() == [7, -6, -42]  # (x * [2, 3, 3]) / y
    finally:
        backend.close()


def test_where_no_utf8_path_can_be_had_the_load_names_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server.backends.ort_paths, "PROC_FDS", tmp_path / "no-proc")  # not Linux's
    path = _dense_model(tmp_path / NOT_UTF8 / "m" / "1" / "model.onnx")
    with pytest.raises(BackendLoadError) as caught:
        _backend(path)
    message = str(caught.value)
    assert message.startswith(f"model 'm': cannot load {path}: its directory 'bad\\xffbytes' is not UTF-8")
    assert "rename the directory" in message


def test_a_file_name_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / os.fsdecode(b"model\xfe.onnx")
    with (
        pytest.raises(NotUtf8Path, match=r"its file name 'model\\xfe.onnx' is not UTF-8"),
        onnxruntime_path(path),
    ):
        pass


def test_a_utf8_path_is_passed_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "ünïcødé ☃" / "model.onnx"
    with onnxruntime_path(path) as usable:
        assert usable == path
