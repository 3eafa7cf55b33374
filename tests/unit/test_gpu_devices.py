"""Which GPUs the server may use (server/backends/gpu_devices.py), with a fake /proc folder and a
fake environment: the driver's devices, CUDA_VISIBLE_DEVICES read as CUDA reads it, and none
without onnxruntime's CUDA provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.backends.gpu_devices import physical_count, visible_gpus, visible_ids

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _proc(tmp_path: Path, n: int) -> Path:
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    for i in range(n):
        (gpus / f"0000:{i + 1:02x}:00.0").mkdir()
    return gpus


def _no_smi() -> int | None:
    raise AssertionError("nvidia-smi asked although /proc answered")


def test_every_driver_device_is_visible_without_cuda_visible_devices(tmp_path: Path) -> None:
    assert visible_gpus(CUDA, {}, _proc(tmp_path, 4), _no_smi) == (0, 1, 2, 3)


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ("2,1", (0, 1)),  # CUDA renumbers what it lets through: two devices, 0 and 1
        ("3", (0,)),
        ("", ()),  # set but empty: none
        ("-1", ()),
        ("0,2,-1,1", (0, 1)),  # read up to the first invalid entry
        ("0,7", (0,)),  # 7 does not exist
        ("1,1", (0,)),  # a repeat ends it
        (" 0 , 1 ", (0, 1)),
        ("GPU-8f6c1b2e,1", (0, 1)),  # UUIDs count as devices
        ("nvidia0", ()),
    ],
)
def test_cuda_visible_devices_narrows_and_renumbers(tmp_path: Path, value: str, ids: tuple[int, ...]) -> None:
    assert visible_gpus(CUDA, {"CUDA_VISIBLE_DEVICES": value}, _proc(tmp_path, 4), _no_smi) == ids


def test_no_cuda_provider_means_no_gpu(tmp_path: Path) -> None:
    assert visible_gpus(["CPUExecutionProvider"], {}, _proc(tmp_path, 2), _no_smi) == ()


def test_nvidia_smi_counts_when_there_is_no_proc_folder(tmp_path: Path) -> None:
    assert physical_count(tmp_path / "missing", lambda: 2) == 2
    assert visible_gpus(CUDA, {"CUDA_VISIBLE_DEVICES": "1"}, tmp_path / "missing", lambda: 2) == (0,)
    assert visible_gpus(CUDA, {}, tmp_path / "missing", lambda: 0) == ()


def test_visible_ids_without_devices_is_empty() -> None:
    assert visible_ids(None, 0) == ()
    assert visible_ids("0,1", 0) == ()
    assert visible_ids(None, 2) == (0, 1)


def test_a_cuda_build_whose_devices_cannot_be_counted_gets_gpu_0(tmp_path: Path) -> None:
    # No driver folder and no nvidia-smi (some containers): GPU 0, as before the count existed,
    # not none at all (which would have put every KIND_GPU instance on the CPU).
    assert physical_count(tmp_path / "missing", lambda: None) is None
    assert visible_gpus(CUDA, {}, tmp_path / "missing", lambda: None) == (0,)
    assert visible_gpus(CUDA, {"CUDA_VISIBLE_DEVICES": ""}, tmp_path / "missing", lambda: None) == ()
    assert visible_gpus(["CPUExecutionProvider"], {}, tmp_path / "missing", lambda: None) == ()
