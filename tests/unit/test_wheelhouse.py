"""scripts/wheelhouse.py: wheels cut into folders that each fit one transfer, and joined back,
checked, on the other side (offline: synthetic wheels; `fetch`'s download is not run here)."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "wheelhouse.py"


@pytest.fixture(scope="module")
def wh() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wheelhouse_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def make_wheels(folder: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    folder.mkdir()
    rng = random.Random(7)
    made = {}
    for name, size in sizes.items():
        made[name] = rng.randbytes(size)
        (folder / name).write_bytes(made[name])
    return made


SIZES = {
    "big-1.0-cp312-cp312-manylinux_2_28_x86_64.whl": 2500,  # three parts of 1000
    "mid-2.0-py3-none-any.whl": 1000,  # exactly one part: whole
    "small_a-0.1-py3-none-any.whl": 300,
    "small_b-0.1-py3-none-any.whl": 650,
}


def test_folders_fit_the_limit_and_the_join_gives_the_wheels_back(wh: ModuleType, tmp_path: Path) -> None:
    wheels = make_wheels(tmp_path / "wheels", SIZES)
    folders = wh.split(tmp_path / "wheels", tmp_path / "house", 1000)
    for folder in folders:
        assert sum(f.stat().st_size for f in folder.iterdir() if f.name != wh.MANIFEST) <= 1000
    names = sorted(f.name for folder in folders for f in folder.iterdir() if f.name != wh.MANIFEST)
    big = "big-1.0-cp312-cp312-manylinux_2_28_x86_64.whl"
    assert [n for n in names if n.startswith("big")] == [f"{big}.part000", f"{big}.part001", f"{big}.part002"]
    # 4450 bytes in folders of 1000: five at least, and first-fit-decreasing needs no more.
    assert len(folders) == 5
    out = wh.join(tmp_path / "house", tmp_path / "out")
    assert {p.name: p.read_bytes() for p in out} == wheels


def test_every_folder_carries_the_whole_manifest(wh: ModuleType, tmp_path: Path) -> None:
    make_wheels(tmp_path / "wheels", SIZES)
    folders = wh.split(tmp_path / "wheels", tmp_path / "house", 1000)
    texts = {(folder / wh.MANIFEST).read_text() for folder in folders}
    assert len(texts) == 1
    layout = json.loads(texts.pop())
    assert layout["folders"] == len(folders) and sorted(layout["wheels"]) == sorted(SIZES)


def test_a_folder_that_has_not_arrived_is_named(wh: ModuleType, tmp_path: Path) -> None:
    make_wheels(tmp_path / "wheels", SIZES)
    wh.split(tmp_path / "wheels", tmp_path / "house", 1000)
    for f in (tmp_path / "house" / "3").iterdir():
        f.unlink()
    (tmp_path / "house" / "3").rmdir()
    with pytest.raises(SystemExit, match="folders 3 of 5 have not arrived"):
        wh.join(tmp_path / "house", tmp_path / "out")


def test_a_part_missing_inside_an_arrived_folder_is_named(wh: ModuleType, tmp_path: Path) -> None:
    make_wheels(tmp_path / "wheels", SIZES)
    wh.split(tmp_path / "wheels", tmp_path / "house", 1000)
    part = next((tmp_path / "house").glob("*/big-*.part001"))
    part.unlink()  # a copy cut short: the folder and its manifest arrived, this part did not
    name = f"{part.parent.name}/{part.name}"
    with pytest.raises(SystemExit, match=f"parts missing in .*: {re.escape(name)} "):
        wh.join(tmp_path / "house", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any wheel was written


def test_a_damaged_part_is_refused_and_not_left_behind(wh: ModuleType, tmp_path: Path) -> None:
    make_wheels(tmp_path / "wheels", SIZES)
    wh.split(tmp_path / "wheels", tmp_path / "house", 1000)
    part = next((tmp_path / "house").glob("*/big-*.part001"))
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF  # same size, other bytes: only the digest can tell
    part.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match=r"big-1\.0-.* do not match its manifest"):
        wh.join(tmp_path / "house", tmp_path / "out")
    assert not list((tmp_path / "out").glob("big-*"))


def test_a_folder_without_a_manifest_is_not_a_wheelhouse(wh: ModuleType, tmp_path: Path) -> None:
    make_wheels(tmp_path / "wheels", SIZES)
    with pytest.raises(SystemExit, match="not a split wheelhouse"):
        wh.join(tmp_path / "wheels", tmp_path / "out")


def test_pack_never_overfills_and_keeps_every_byte(wh: ModuleType) -> None:
    rng = random.Random(3)
    sizes = {f"w{i}-1-py3-none-any.whl": rng.randint(1, 5000) for i in range(60)}
    folders = wh.pack(sizes, 1024)
    assert all(sum(p.size for p in folder) <= 1024 for folder in folders)
    assert sum(p.size for folder in folders for p in folder) == sum(sizes.values())
    assert len(folders) <= -(-sum(sizes.values()) // 1024) + 2  # near the bound, not one a piece


def test_project_names_are_normalised(wh: ModuleType) -> None:
    assert wh.project_name("ml_dtypes-0.5.4-cp312-cp312-manylinux_2_28_x86_64.whl") == "ml-dtypes"
    assert wh.project_name("Onnx-1.23.2-cp312-abi3-manylinux_2_28_x86_64.whl") == "onnx"


@pytest.mark.parametrize(
    ("python", "runtime"), [("3.12", "onnxruntime-gpu==1.31.1"), ("3.10", "onnxruntime-gpu==1.23.2")]
)
def test_requirements_follow_the_target_python(wh: ModuleType, python: str, runtime: str) -> None:
    wanted = wh.requirements(SCRIPT.parents[1] / "pyproject.toml", python)
    assert runtime in wanted and sum(r.startswith("onnxruntime") for r in wanted) == 1
    assert "tritonclient[grpc]>=2.60" in wanted and "setuptools>=68" in wanted
    assert not [r for r in wanted if ";" in r], "markers are decided, not passed on"


def test_fetch_adds_perf_analyzer_by_its_own_platform_tag(
    wh: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """perf_analyzer's real wheels are tagged glibc 2.38, a tag the project's list does not hold
    (pip then takes an empty 0.1.0 placeholder): it is asked for alone, pinned, without dependencies.
    pip is not run: each call is recorded and leaves a wheel named after what it asked for."""
    calls: list[list[str]] = []

    def pip(command: list[str], check: bool) -> None:
        calls.append(command)
        folder = Path(command[command.index("-d") + 1])
        name = (
            "perf_analyzer-2.60.0-py3-none-manylinux_2_38_x86_64.whl"
            if "--no-deps" in command
            else "a-1-py3-none-any.whl"
        )
        (folder / name).write_bytes(b"wheel")

    monkeypatch.setattr(wh.subprocess, "run", pip)
    folders = wh.fetch(tmp_path / "house", "3.12", 1 << 20, set(), "2.60.0")
    (project, tool) = calls
    assert tool[-1] == "perf-analyzer==2.60.0" and "--no-deps" in tool
    assert [tool[i + 1] for i, arg in enumerate(tool) if arg == "--platform"] == ["manylinux_2_38_x86_64"]
    assert "perf-analyzer==2.60.0" not in project and "--no-deps" not in project
    assert sorted(f.name for folder in folders for f in folder.glob("*.whl")) == [
        "a-1-py3-none-any.whl",
        "perf_analyzer-2.60.0-py3-none-manylinux_2_38_x86_64.whl",
    ]
    calls.clear()
    wh.fetch(tmp_path / "without", "3.12", 1 << 20, set(), "none")
    assert len(calls) == 1
