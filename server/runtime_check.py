"""Start-up check of the onnxruntime install: exactly one wheel that provides the module `onnxruntime`.

onnxruntime (CPU) and onnxruntime-gpu both install the package `onnxruntime`. Installed into one
site-packages folder they overwrite each other's files, and which build the server then runs
depends on the order they were installed in: `serve` refuses to start, says whose files the module
now is, and names the fix. Installed in different folders (a venv with --system-site-packages),
the one imported is used whole and the other is only shadowed: a warning names the one in use.
Which wheel is in use is decided from what import finds, not from metadata alone: the folder of the
module `onnxruntime`, and whether each wheel's build file is there with the content its RECORD
gives. A `.dist-info` left without its files (removed or overwritten by the other wheel) is named
as a leftover with the fix, never as the wheel in use. With none installed (the extras `cpu`/`gpu`
were left out) the server stops with the install command instead of an ImportError at the first
model.

The distributions and the imported folder are arguments, so every case is tested without
installing wheels.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Wheels that ship the module `onnxruntime` (PyPI names, normalised).
RUNTIMES = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-training",
)
logger = logging.getLogger(__name__)
FIX = (
    "pip uninstall -y onnxruntime onnxruntime-gpu, then install one of them: "
    "pip install 'sluiceway[cpu]' (CPU) or pip install 'sluiceway[gpu]' (NVIDIA GPU)"
)


@dataclass(frozen=True)
class Installed:
    """One installed distribution: its normalised name, version and site folder, and whether its
    files are there as its RECORD lists them (False: metadata left without its files)."""

    name: str
    version: str
    location: str
    files: bool = True


@dataclass(frozen=True)
class Verdict:
    """`error`: stop with this message; `warning`: log it and go on; `runtime`: the wheel imported."""

    runtime: Installed | None
    error: str | None = None
    warning: str | None = None


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# A file each wheel writes with its own name in it (package_name = 'onnxruntime-gpu'): whose
# content matches a wheel's RECORD tells whose files the module is, without importing it.
BUILD_INFO = "onnxruntime/capi/build_and_package_info.py"


def _record(dist: importlib.metadata.Distribution) -> dict[str, str]:
    """The RECORD's paths and hashes (`sha256=...`, or '' where none), read as text: Python 3.13's
    `Distribution.files` leaves out the files that are missing, the very ones a leftover lacks."""
    rows = csv.reader((dist.read_text("RECORD") or "").splitlines())
    return {row[0].replace("\\", "/"): row[1] if len(row) > 1 else "" for row in rows if row}


def _files_present(dist: importlib.metadata.Distribution) -> bool:
    """Whether the wheel's build file is there with the content its RECORD gives (listed without a
    hash: there at all); True when the RECORD names no such file (nothing to judge by)."""
    listed = _record(dist)
    name = next((n for n in (BUILD_INFO, "onnxruntime/__init__.py") if n in listed), None)
    if name is None:
        return True
    try:
        content = Path(str(dist.locate_file(name))).read_bytes()
    except OSError:
        return False
    mode, _, value = listed[name].partition("=")
    if mode != "sha256" or not value:
        return True
    digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
    return digest == value


def installed_runtimes(path: list[str] | None = None) -> list[Installed]:
    """The onnxruntime wheels importlib.metadata finds on `path` (None: sys.path; each folder once).

    Looked up by name: importlib matches a name against each folder's `*.dist-info` names and reads
    only the matches' metadata. Reading every installed distribution's took ~0.5 s of CPU at each
    start (87 in a venv here), half of a small server's start-up (BENCHMARKS.md section 23)."""
    found: dict[tuple[str, str], Installed] = {}
    for runtime in RUNTIMES:
        for dist in importlib.metadata.distributions(name=runtime, path=sys.path if path is None else path):
            name = normalise(dist.metadata.get("Name") or "")
            if name in RUNTIMES:
                location = str(Path(str(dist.locate_file(""))).resolve())
                key = (name, location)
                found.setdefault(key, Installed(name, dist.version, location, _files_present(dist)))
    return list(found.values())


def imported_location(path: list[str] | None = None) -> str | None:
    """The site folder of the package `import onnxruntime` would load from `path` (None: sys.path),
    or None when there is none. Found, not imported: telemetry and the GPU preload come first."""
    finder = importlib.machinery.PathFinder
    spec = importlib.util.find_spec("onnxruntime") if path is None else finder.find_spec("onnxruntime", path)
    if spec is None:
        return None
    places = list(spec.submodule_search_locations or [])
    module = Path(places[0]) if places else Path(spec.origin or ".")
    return str(module.resolve().parent)


def _describe(item: Installed) -> str:
    return f"{item.name} {item.version} ({item.location})"


def _leftover(items: Sequence[Installed]) -> str:
    names = ", ".join(_describe(item) for item in items)
    return (
        f"{names}: metadata without its files (a leftover .dist-info: its files were removed or "
        "overwritten by another onnxruntime wheel)"
    )


def check(installed: Iterable[Installed], imported: str | None) -> Verdict:
    """`imported`: the site folder of the module `onnxruntime` that import finds (None: none). The
    wheel in use is the one whose metadata is in that folder with its files; the others are named."""
    runtimes = sorted(installed, key=lambda item: (item.location != imported, item.location, item.name))
    if not runtimes and imported is not None:
        return Verdict(
            None,
            warning="onnxruntime is importable but no onnxruntime wheel is installed: "
            "a build from source or on PYTHONPATH, not checked",
        )
    if not runtimes:
        return Verdict(
            None,
            error="no onnxruntime is installed: install the server with one runtime, "
            "pip install 'sluiceway[cpu]' (CPU) or pip install 'sluiceway[gpu]' (NVIDIA GPU)",
        )
    if imported is None:
        return Verdict(
            None, error=f"no module `onnxruntime` can be imported; {_leftover(runtimes)}. Fix: {FIX}"
        )
    by_folder: dict[str, list[Installed]] = {}
    for item in runtimes:
        by_folder.setdefault(item.location, []).append(item)
    for items in by_folder.values():
        if len(items) > 1:
            names = " and ".join(_describe(item) for item in items)
            owners = [item.name for item in items if item.files]
            whose = f"now {owners[0]}'s" if len(owners) == 1 else "a mix that matches neither wheel's record"
            return Verdict(
                None,
                error=f"conflicting onnxruntime wheels: {names} are installed together and overwrite "
                f"each other's files (the module `onnxruntime` there is {whose}). Fix: {FIX}",
            )
    used = by_folder.get(imported, [None])[0]
    others = [item for item in runtimes if item is not used]
    if used is None:
        return Verdict(
            None,
            warning=f"the module `onnxruntime` is imported from {imported}, which has no onnxruntime "
            f"wheel's metadata (a build from source or a copy, not checked); not in use: "
            f"{', '.join(_describe(item) for item in others)}",
        )
    if not used.files:
        return Verdict(
            None,
            error=f"the module `onnxruntime` in {imported} is not the files {_describe(used)} installed "
            f"(overwritten or partly removed by another onnxruntime wheel). Fix: {FIX}",
        )
    if not others:
        return Verdict(used)
    shadowed = [item for item in others if item.files]
    left = [item for item in others if not item.files]
    parts = [f"onnxruntime: using {_describe(used)}, whose files are the module imported"]
    if shadowed:
        parts.append(
            f"shadowed (installed in a folder later on sys.path): "
            f"{', '.join(_describe(item) for item in shadowed)} (remove the one not wanted)"
        )
    if left:
        parts.append(f"{_leftover(left)}. Fix: {FIX}")
    return Verdict(used, warning="; ".join(parts))


def check_installed() -> Verdict:
    """The verdict for this process's own installs and sys.path."""
    return check(installed_runtimes(), imported_location())


def quiet_telemetry(environ: MutableMapping[str, str]) -> None:
    """Turn onnxruntime's telemetry off unless ORT_DISABLE_TELEMETRY says otherwise; call before
    onnxruntime is imported. onnxruntime 1.31 starts it at import: it writes a device id under
    $XDG_CACHE_HOME or ~/.cache (a server's HOME is often read-only, and then it printed a plain
    "Failed to persist telemetry device ID" line among JSON logs) and would upload events."""
    environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def ensure_runtime(preload: bool = True) -> str | None:
    """At `serve`: None when the server can go on (a shadowed wheel logged as a warning, and with
    `preload` the GPU wheel's NVIDIA libraries loaded), else the message to stop with."""
    verdict = check_installed()
    if verdict.error is not None:
        return verdict.error
    if verdict.warning is not None:
        logger.warning("%s", verdict.warning)
    if preload and verdict.runtime is not None:
        from server.gpu_libraries import preload_for

        for note in preload_for(verdict.runtime.name):
            logger.info("%s", note)
    return None
