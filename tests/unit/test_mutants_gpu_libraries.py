"""Pins of server/gpu_libraries.py's default effects (installed names, the TensorRT folder,
onnxruntime's preload, the RTLD_GLOBAL load) and the exact notes preload_for logs."""

from __future__ import annotations

import ctypes
import importlib
import sys
import types
from pathlib import Path

import pytest

from server.gpu_libraries import (
    TENSORRT_LIBRARIES,
    _load_global,
    installed_names,
    onnxruntime_preload,
    preload_for,
    tensorrt_folder,
)


def only_on_path(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """sys.path is just `folder`, with import caches cleared."""
    monkeypatch.setattr(sys, "path", [str(folder)])
    monkeypatch.delitem(sys.modules, "tensorrt_libs", raising=False)
    importlib.invalidate_caches()


def test_installed_names_are_normalised_metadata_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each distribution's Name, normalised; one without a Name gives ''."""
    for folder, metadata in (
        ("nvidia_cudnn_cu13-9.0.dist-info", "Name: Nvidia_CUDNN.cu13\nVersion: 9.0\n"),
        ("tensorrt_cu13_libs-10.0.dist-info", "Name: tensorrt-cu13-libs\nVersion: 10.0\n"),
        ("nameless-1.0.dist-info", "Version: 1.0\n"),
    ):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "METADATA").write_text("Metadata-Version: 2.1\n" + metadata)
    only_on_path(monkeypatch, tmp_path)
    assert installed_names() == {"nvidia-cudnn-cu13", "tensorrt-cu13-libs", ""}


def test_tensorrt_folder_is_the_tensorrt_libs_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `tensorrt_libs` package found on sys.path gives its own folder."""
    (tmp_path / "tensorrt_libs").mkdir()
    (tmp_path / "tensorrt_libs" / "__init__.py").write_text("")
    only_on_path(monkeypatch, tmp_path)
    assert tensorrt_folder() == tmp_path / "tensorrt_libs"


def test_no_tensorrt_libs_package_gives_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not installed, or a plain module of that name (no package folder): None."""
    only_on_path(monkeypatch, tmp_path)
    assert tensorrt_folder() is None
    (tmp_path / "tensorrt_libs.py").write_text("")
    only_on_path(monkeypatch, tmp_path)
    assert tensorrt_folder() is None


def test_onnxruntime_preload_calls_preload_dlls_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime >= 1.21: its preload_dlls() is called once."""
    calls: list[str] = []
    module = types.ModuleType("onnxruntime")
    module.preload_dlls = lambda: calls.append("preload_dlls")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "onnxruntime", module)
    onnxruntime_preload()
    assert calls == ["preload_dlls"]


def test_onnxruntime_without_preload_dlls_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """An onnxruntime older than 1.21 (no preload_dlls): nothing is called, nothing raised."""
    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))
    onnxruntime_preload()


def test_load_global_opens_the_path_with_rtld_global(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library is opened by its path with RTLD_GLOBAL, so the provider's dlopen resolves to it."""
    opened: list[tuple[str, int]] = []

    def cdll(name: str, mode: int = ctypes.DEFAULT_MODE) -> str:
        opened.append((name, mode))
        return "handle"

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    assert _load_global("/x/libnvinfer.so.10") == "handle"
    assert opened == [("/x/libnvinfer.so.10", ctypes.RTLD_GLOBAL)]
    assert ctypes.RTLD_GLOBAL != ctypes.DEFAULT_MODE


def test_preload_notes_name_the_wheels_and_each_library_loaded(tmp_path: Path) -> None:
    """The notes in full: the NVIDIA wheels sorted and comma-joined, then one per TensorRT library."""
    loaded: list[str] = []

    def load(path: str) -> object:
        loaded.append(path)
        return object()

    names = {"nvidia-cudnn-cu13", "numpy", "nvidia-cuda-runtime"}
    notes = preload_for("onnxruntime-gpu", lambda: names, lambda: None, lambda: tmp_path, load)
    assert notes == [
        "preloaded CUDA and cuDNN from NVIDIA's wheels (nvidia-cuda-runtime, nvidia-cudnn-cu13)",
        f"preloaded {tmp_path / 'libnvinfer.so.10'}",
        f"preloaded {tmp_path / 'libnvonnxparser.so.10'}",
    ]
    assert loaded == [str(tmp_path / name) for name in TENSORRT_LIBRARIES]
