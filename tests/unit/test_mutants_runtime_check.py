"""Pins of server/runtime_check.py the other tests left loose: the RECORD reading, the exact text of
every refusal and warning an operator reads, the lookup of wheels by name, and what `serve` logs."""

from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import sys
import types
from pathlib import Path

import pytest

import server.gpu_libraries
from server import runtime_check
from server.runtime_check import (
    BUILD_INFO,
    FIX,
    RUNTIMES,
    Installed,
    Verdict,
    _files_present,
    _record,
    check,
    ensure_runtime,
    imported_location,
    installed_runtimes,
    quiet_telemetry,
)

SITE = "/venv/site"
CPU = Installed("onnxruntime", "1.31.1", SITE)
GPU = Installed("onnxruntime-gpu", "1.31.1", SITE)
INIT = "onnxruntime/__init__.py"
LEFTOVER = (
    "metadata without its files (a leftover .dist-info: its files were removed or "
    "overwritten by another onnxruntime wheel)"
)


def sha(content: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()


def dist(
    site: Path, record: str | None, files: dict[str, bytes] | None = None
) -> importlib.metadata.Distribution:
    """A distribution in `site` with this RECORD text (None: no RECORD) and these files written."""
    info = site / "onnxruntime-1.31.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime\nVersion: 1.31.1\n")
    if record is not None:
        (info / "RECORD").write_text(record)
    for name, content in (files or {}).items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(content)
    return importlib.metadata.PathDistribution(info)


def test_record_maps_paths_to_hashes_with_windows_separators_and_missing_columns(tmp_path: Path) -> None:
    """RECORD rows: backslashes become slashes, a row of a path alone or path and hash is kept."""
    text = "onnxruntime\\capi\\x.py,sha256=abc,3\nonnxruntime/a.py\nonnxruntime/b.py,sha256=def\n\n"
    assert _record(dist(tmp_path, text)) == {
        "onnxruntime/capi/x.py": "sha256=abc",
        "onnxruntime/a.py": "",
        "onnxruntime/b.py": "sha256=def",
    }


def test_a_missing_record_reads_as_no_files(tmp_path: Path) -> None:
    """A distribution without a RECORD lists nothing (and so is judged present)."""
    one = dist(tmp_path, None)
    assert _record(one) == {}
    assert _files_present(one) is True


def test_a_record_without_the_module_files_gives_nothing_to_judge_by(tmp_path: Path) -> None:
    """Neither the build file nor __init__.py in the RECORD: the files count as present."""
    assert _files_present(dist(tmp_path, "other/file.py,sha256=abc,3\n")) is True


def test_a_windows_style_record_path_is_judged_by_its_content(tmp_path: Path) -> None:
    """A backslash RECORD path to the build file is still compared: other content is not its files."""
    record = "onnxruntime\\capi\\build_and_package_info.py,sha256=" + sha(b"mine") + ",4\n"
    assert _files_present(dist(tmp_path, record, {BUILD_INFO: b"other"})) is False


def test_init_py_is_judged_when_the_record_has_no_build_file(tmp_path: Path) -> None:
    """Without the build file in RECORD, onnxruntime/__init__.py's hash decides."""
    record = f"{INIT},sha256={sha(b'mine')},4\n"
    assert _files_present(dist(tmp_path / "a", record, {INIT: b"other"})) is False
    assert _files_present(dist(tmp_path / "b", record, {INIT: b"mine"})) is True


def test_a_build_file_listed_without_a_hash_counts_when_it_is_there(tmp_path: Path) -> None:
    """A RECORD row without a hash: the file being there is enough; missing it is not."""
    assert _files_present(dist(tmp_path / "a", f"{BUILD_INFO},,\n", {BUILD_INFO: b"x"})) is True
    assert _files_present(dist(tmp_path / "b", f"{BUILD_INFO},,\n")) is False


def test_a_hash_of_another_algorithm_is_not_compared(tmp_path: Path) -> None:
    """Only sha256 is checked: an md5 row, or `sha256=` with no value, counts as present."""
    assert _files_present(dist(tmp_path / "a", f"{BUILD_INFO},md5=abc,1\n", {BUILD_INFO: b"x"})) is True
    assert _files_present(dist(tmp_path / "b", f"{BUILD_INFO},sha256=,1\n", {BUILD_INFO: b"x"})) is True


def test_a_padded_hash_is_split_at_its_first_equals_sign(tmp_path: Path) -> None:
    """`sha256=<digest>=` is a sha256 whose value keeps the padding, so it does not match."""
    record = f"{BUILD_INFO},sha256={sha(b'x')}=,1\n"
    assert _files_present(dist(tmp_path, record, {BUILD_INFO: b"x"})) is False


def test_wheels_are_looked_up_by_name_on_the_given_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One importlib lookup per runtime name, never a scan of every distribution."""
    calls: list[tuple[object, object]] = []

    def spy(**kwargs: object) -> list[object]:
        calls.append((kwargs.get("name"), kwargs.get("path")))
        return []

    monkeypatch.setattr(importlib.metadata, "distributions", spy)
    assert installed_runtimes([str(tmp_path)]) == []
    assert calls == [(name, [str(tmp_path)]) for name in RUNTIMES]


def test_a_module_file_reports_its_folder(tmp_path: Path) -> None:
    """`onnxruntime.py` rather than a package: the folder holding the file."""
    (tmp_path / "onnxruntime.py").write_text("")
    assert imported_location([str(tmp_path)]) == str(tmp_path.resolve())


def test_an_already_imported_module_is_the_one_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a path, the module already in sys.modules decides, not a fresh search of sys.path."""
    spec = importlib.machinery.ModuleSpec("onnxruntime", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path / "onnxruntime")]
    module = types.ModuleType("onnxruntime")
    module.__spec__ = spec
    monkeypatch.setitem(sys.modules, "onnxruntime", module)
    assert imported_location() == str(tmp_path.resolve())


def test_no_importable_module_names_every_leftover() -> None:
    """Leftover metadata and no module: the full refusal, leftovers joined by commas."""
    verdict = check(
        [Installed("onnxruntime-gpu", "1.3", "/b", False), Installed("onnxruntime", "1.2", "/a")], None
    )
    assert verdict == Verdict(
        None,
        error="no module `onnxruntime` can be imported; onnxruntime 1.2 (/a), onnxruntime-gpu 1.3 (/b): "
        f"{LEFTOVER}. Fix: {FIX}",
    )


def test_an_importable_module_without_any_wheel_warns() -> None:
    """A module but no wheel metadata: the full warning, the server goes on."""
    assert check([], SITE) == Verdict(
        None,
        warning="onnxruntime is importable but no onnxruntime wheel is installed: "
        "a build from source or on PYTHONPATH, not checked",
    )


def test_nothing_installed_stops_with_the_install_command() -> None:
    """No wheel and no module: the full refusal with both install commands."""
    assert check([], None) == Verdict(
        None,
        error="no onnxruntime is installed: install the server with one runtime, "
        "pip install 'sluiceway[cpu]' (CPU) or pip install 'sluiceway[gpu]' (NVIDIA GPU)",
    )


def test_two_wheels_with_their_files_in_one_folder_are_a_mix() -> None:
    """Both wheels' records match (files=True): the full refusal says the module is a mix."""
    assert check([GPU, CPU], SITE) == Verdict(
        None,
        error=f"conflicting onnxruntime wheels: onnxruntime 1.31.1 ({SITE}) and "
        f"onnxruntime-gpu 1.31.1 ({SITE}) "
        "are installed together and overwrite each other's files (the module `onnxruntime` there is a mix "
        f"that matches neither wheel's record). Fix: {FIX}",
    )


def test_the_conflict_in_the_imported_folder_is_the_one_reported() -> None:
    """Conflicts in two folders: the refusal names the folder import uses, even if sorted later."""
    other = [Installed("onnxruntime", "1.0", "/a"), Installed("onnxruntime-gpu", "1.0", "/a", False)]
    ours = [Installed("onnxruntime", "2.0", "/b", False), Installed("onnxruntime-gpu", "2.0", "/b")]
    verdict = check(other + ours, "/b")
    assert verdict.error == (
        "conflicting onnxruntime wheels: onnxruntime 2.0 (/b) and onnxruntime-gpu 2.0 (/b) are installed "
        "together and overwrite each other's files "
        "(the module `onnxruntime` there is now onnxruntime-gpu's). "
        f"Fix: {FIX}"
    )


def test_a_module_in_a_folder_without_metadata_warns_and_names_the_others() -> None:
    """Imported from a folder no wheel is in: the full warning listing every wheel not in use."""
    verdict = check(
        [Installed("onnxruntime-gpu", "1.3", "/b"), Installed("onnxruntime", "1.2", "/a")], "/src"
    )
    assert verdict == Verdict(
        None,
        warning="the module `onnxruntime` is imported from /src, which has no onnxruntime wheel's metadata "
        "(a build from source or a copy, not checked); "
        "not in use: onnxruntime 1.2 (/a), onnxruntime-gpu 1.3 (/b)",
    )


def test_shadowed_and_leftover_wheels_are_all_named_in_one_warning() -> None:
    """The wheel in use, two shadowed wheels and a leftover: the full warning, parts joined by '; '."""
    installed = [
        GPU,
        Installed("onnxruntime", "1.2", "/a"),
        Installed("onnxruntime-openvino", "1.1", "/b"),
        Installed("onnxruntime-training", "1.0", "/c", False),
    ]
    assert check(installed, SITE) == Verdict(
        GPU,
        warning=f"onnxruntime: using onnxruntime-gpu 1.31.1 ({SITE}), whose files are the module imported; "
        "shadowed (installed in a folder later on sys.path): "
        "onnxruntime 1.2 (/a), onnxruntime-openvino 1.1 (/b) "
        f"(remove the one not wanted); onnxruntime-training 1.0 (/c): {LEFTOVER}. Fix: {FIX}",
    )


def test_telemetry_is_turned_off_unless_already_set() -> None:
    """ORT_DISABLE_TELEMETRY=1 is added; an operator's own value is kept."""
    environ: dict[str, str] = {}
    quiet_telemetry(environ)
    assert environ == {"ORT_DISABLE_TELEMETRY": "1"}
    kept = {"ORT_DISABLE_TELEMETRY": "0"}
    quiet_telemetry(kept)
    assert kept == {"ORT_DISABLE_TELEMETRY": "0"}


def serve_with(monkeypatch: pytest.MonkeyPatch, verdict: Verdict) -> list[str]:
    """Make `ensure_runtime` see `verdict`; returns the runtimes preload_for is called with."""
    calls: list[str] = []

    def preload_for(runtime: str) -> list[str]:
        calls.append(runtime)
        return ["note one", "note 100%"]

    monkeypatch.setattr(runtime_check, "check_installed", lambda: verdict)
    monkeypatch.setattr(server.gpu_libraries, "preload_for", preload_for)
    return calls


def test_serve_stops_with_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error verdict is returned as the message to stop with, nothing preloaded."""
    calls = serve_with(monkeypatch, Verdict(None, error="stop here"))
    assert ensure_runtime() == "stop here"
    assert calls == []


def test_serve_logs_the_warning_and_preloads_by_default(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A warning verdict with a runtime: the warning logged, then the runtime's preload notes logged."""
    calls = serve_with(monkeypatch, Verdict(GPU, warning="shadowed 5%s"))
    with caplog.at_level(logging.INFO, logger=runtime_check.__name__):
        assert ensure_runtime() is None
    assert calls == ["onnxruntime-gpu"]
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert logged == [("WARNING", "shadowed 5%s"), ("INFO", "note one"), ("INFO", "note 100%")]


def test_serve_without_preload_loads_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """preload=False: no preload call and nothing logged for a clean verdict."""
    calls = serve_with(monkeypatch, Verdict(GPU))
    with caplog.at_level(logging.INFO, logger=runtime_check.__name__):
        assert ensure_runtime(preload=False) is None
    assert calls == [] and caplog.records == []


def test_serve_with_an_unchecked_build_preloads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source build (no runtime in the verdict) goes on without any preload."""
    calls = serve_with(monkeypatch, Verdict(None, warning="a build from source"))
    assert ensure_runtime() is None
    assert calls == []
