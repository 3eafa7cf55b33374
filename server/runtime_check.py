"""Start-up check of the onnxruntime install: exactly one wheel that provides the module `onnxruntime`.

onnxruntime (CPU) and onnxruntime-gpu both install the package `onnxruntime`. Installed into one
site-packages folder they overwrite each other's files, and which build the server then runs
depends on the order they were installed in: `serve` refuses to start and names the fix. Installed
in different folders (a venv with --system-site-packages), the one earlier on sys.path is imported
whole and the other is only shadowed: a warning names the one in use. With none installed (the
extras `cpu`/`gpu` were left out) the server stops with the install command instead of an
ImportError at the first model.

The distributions and sys.path are arguments, so every case is tested without installing wheels.
"""

from __future__ import annotations

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
    """One installed distribution: its normalised name, version and site folder."""

    name: str
    version: str
    location: str


@dataclass(frozen=True)
class Verdict:
    """`error`: stop with this message; `warning`: log it and go on; `runtime`: the wheel imported."""

    runtime: Installed | None
    error: str | None = None
    warning: str | None = None


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_runtimes() -> list[Installed]:
    """The onnxruntime wheels importlib.metadata finds on sys.path (each folder once).

    Looked up by name: importlib matches a name against each folder's `*.dist-info` names and reads
    only the matches' metadata. Reading every installed distribution's took ~0.5 s of CPU at each
    start (87 in a venv here), half of a small server's start-up (BENCHMARKS.md section 23)."""
    found: dict[tuple[str, str], Installed] = {}
    for runtime in RUNTIMES:
        for dist in importlib.metadata.distributions(name=runtime):
            name = normalise(dist.metadata["Name"] or "")
            if name in RUNTIMES:
                location = str(Path(str(dist.locate_file(""))).resolve())
                found.setdefault((name, location), Installed(name, dist.version, location))
    return list(found.values())


def _describe(item: Installed) -> str:
    return f"{item.name} {item.version} ({item.location})"


def _rank(location: str, search_path: Sequence[str]) -> int:
    """Position of `location` on sys.path: the first folder holding `onnxruntime` is the one imported."""
    for index, entry in enumerate(search_path):
        if entry and str(Path(entry).resolve()) == location:
            return index
    return len(search_path)


def check(installed: Iterable[Installed], search_path: Sequence[str], importable: bool = False) -> Verdict:
    """`importable`: whether `import onnxruntime` would find a module (a build without wheel metadata)."""
    runtimes = sorted(installed, key=lambda item: (_rank(item.location, search_path), item.name))
    if not runtimes and importable:
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
    by_folder: dict[str, list[Installed]] = {}
    for item in runtimes:
        by_folder.setdefault(item.location, []).append(item)
    for items in by_folder.values():
        if len(items) > 1:
            names = " and ".join(_describe(item) for item in items)
            return Verdict(
                None,
                error=f"conflicting onnxruntime wheels: {names} are installed together and overwrite "
                f"each other's files (the module `onnxruntime` is whichever was installed last). Fix: {FIX}",
            )
    used = runtimes[0]
    if len(runtimes) == 1:
        return Verdict(used)
    shadowed = ", ".join(_describe(item) for item in runtimes[1:])
    return Verdict(
        used,
        warning=f"several onnxruntime wheels are installed in different folders: using {_describe(used)}, "
        f"which comes first on sys.path; {shadowed} is shadowed (remove the one not wanted)",
    )


def check_installed() -> Verdict:
    """The verdict for this process's own installs and sys.path."""
    importable = importlib.util.find_spec("onnxruntime") is not None
    return check(installed_runtimes(), sys.path, importable)


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
